"""The autoguidance study on 2D mixtures: training the pair, sweeping weights, the report and figures."""

from diffguide.study.experiment import StudySettings, run_study

__all__ = ["StudySettings", "run_study"]
