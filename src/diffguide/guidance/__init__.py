"""Guidance: combinators that take denoisers and return a denoiser (`combinators`), and the pairing of
a run with its guide, amateur or classifier (`pairing`)."""

from diffguide.guidance.combinators import (
    Guided,
    NullConditioned,
    autoguidance,
    cfg_and_autoguidance,
    check_interval,
    check_weight,
    classifier_free_guidance,
    classifier_gradient,
    classifier_guidance,
    convert_weight,
    guidance,
)

__all__ = [
    "Guided",
    "NullConditioned",
    "autoguidance",
    "cfg_and_autoguidance",
    "check_interval",
    "check_weight",
    "classifier_free_guidance",
    "classifier_gradient",
    "classifier_guidance",
    "convert_weight",
    "guidance",
]
