"""The physics ramp stage: a sequential ramp test on the white residual of a tracking
state estimator, fitted on clean history without the noise model (see :mod:`.stage`)."""

from detection.models.physics_ramp.stage import (
    MIN_HISTORY_ROWS,
    PHYSICS_FPR_SHARE,
    PHYSICS_SEED,
    PhysicsRampMonitor,
    PhysicsRampStage,
    RampVerdict,
    fit_physics_ramp,
    physics_ramp_verdicts,
)

__all__ = [
    "MIN_HISTORY_ROWS",
    "PHYSICS_FPR_SHARE",
    "PHYSICS_SEED",
    "PhysicsRampMonitor",
    "PhysicsRampStage",
    "RampVerdict",
    "fit_physics_ramp",
    "physics_ramp_verdicts",
]
