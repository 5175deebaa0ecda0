"""Operating scenarios: the conditions a series is generated and attacked under.

A :class:`Scenario` fixes the seed, the measurement noise, the load pattern and the
ranges attack sizes are drawn from. Two families:

* **training** (:func:`training_scenarios`): every scenario draws its noise and load
  pattern from wide ranges around the reference grid (voltage noise 0.1-0.5 %, power
  noise 0.5-2 %, peak hours, weekend dip, variation sizes and zone count all varied),
  and attack sizes from ranges wider than the reference ones on both sides
  (:data:`TRAINING_MAGNITUDES`), so the detector learns the task, not one grid's data;
* **held-out** (:data:`HELD_OUT`): what ``gridfort detect eval --held-out`` scores on:
  seeds no training run uses (training seeds are below :data:`HELD_OUT_SEED`), a noise
  model and a load pattern that are no training draw (other peak hours, six zones,
  larger variations, 0.3 % / 1.3 % noise) and the reference attack ranges, with regions
  drawn by the held-out seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from detection.attacks import AttackMagnitudes
from detection.generate import LoadPattern, NoiseModel

#: Training seeds stay below this; held-out evaluations use it and above.
HELD_OUT_SEED = 100_000

#: Attack sizes seen in training: wider than the reference ranges on both sides.
TRAINING_MAGNITUDES = AttackMagnitudes(
    stealthy_sigma=(3.0, 40.0),
    stealthy_region=(1, 9),
    ramp_sigma=(3.0, 20.0),
    random_sigma=(2.5, 12.0),
    column_share=(0.005, 0.06),
    scaling=(0.05, 0.6),
    replay_region=(1, 10),
    der_share=(0.1, 0.7),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Seed, noise, load pattern and attack ranges of one generated series."""

    seed: int
    noise: NoiseModel = field(default_factory=NoiseModel)
    pattern: LoadPattern = field(default_factory=LoadPattern)
    magnitudes: AttackMagnitudes = field(default_factory=AttackMagnitudes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: The held-out evaluation scenario (see the module docstring).
HELD_OUT = Scenario(
    seed=HELD_OUT_SEED,
    noise=NoiseModel(vm_rel=0.003, power_rel=0.013, power_floor_rel=0.003),
    pattern=LoadPattern(
        morning_peak_h=7.25,
        evening_peak_h=18.25,
        weekend_factor=0.85,
        drift_std=0.065,
        zone_std=0.04,
        own_std=0.025,
        zones=6,
        cloud_range=(0.25, 1.0),
    ),
    magnitudes=AttackMagnitudes(),
)


def random_scenario(seed: int) -> Scenario:
    """One training scenario: noise and load pattern drawn from wide ranges (given ``seed``)."""
    if seed >= HELD_OUT_SEED:
        raise ValueError(f"training seeds must be below {HELD_OUT_SEED}, got {seed}")
    rng = np.random.default_rng([seed, 0x5CE7])
    noise = NoiseModel(
        vm_rel=float(rng.uniform(0.001, 0.005)),
        power_rel=float(rng.uniform(0.005, 0.02)),
        power_floor_rel=float(rng.uniform(0.001, 0.004)),
    )
    pattern = LoadPattern(
        morning_peak_h=float(rng.uniform(6.5, 10.0)),
        evening_peak_h=float(rng.uniform(17.0, 21.0)),
        weekend_factor=float(rng.uniform(0.75, 1.0)),
        drift_std=float(rng.uniform(0.02, 0.08)),
        zone_std=float(rng.uniform(0.01, 0.05)),
        own_std=float(rng.uniform(0.01, 0.035)),
        zones=int(rng.integers(2, 9)),
        cloud_range=(float(rng.uniform(0.15, 0.5)), 1.0),
    )
    return Scenario(seed=seed, noise=noise, pattern=pattern, magnitudes=TRAINING_MAGNITUDES)


def training_scenarios(seed: int, count: int) -> list[Scenario]:
    """``count`` training scenarios derived from one training ``seed``."""
    return [random_scenario(seed * 1009 + k) for k in range(count)]
