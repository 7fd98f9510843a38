"""Noise-aware classifiers: for 2D points (`points`) and images (`images`)."""
