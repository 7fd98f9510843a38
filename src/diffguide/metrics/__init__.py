"""Quality measures: exact-density metrics for 2D mixtures (`points`), classifier-feature metrics for
images (`images`), and probability-flow log-likelihoods (`likelihood`)."""
