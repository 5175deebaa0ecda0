"""Localization pooled over an attacked run (detection.models.localize.LocalizationMemory):
synthetic attacks on the case118 Jacobian with an identity noise model, and the batch and
live paths of the detector (detection.models.detector) on a shipped model."""

from __future__ import annotations

import numpy as np
import pytest

from detection.models.localize import LocalizationMemory, RegionLocalizer
from tests.detection.localize_synthetic import connected_region, identity_localizer, stealthy_row


@pytest.fixture(scope="module")
def localizer() -> RegionLocalizer:
    """case118 with unit noise and no factor model (``P = I``)."""
    return identity_localizer()


def test_a_run_finds_the_region_its_single_rows_miss(localizer: RegionLocalizer) -> None:
    """A weak region (5 noise units at most): one row alone prefers a nearby wrong region
    in all but one of 12 rows; pooled over the run, the region is exact from the sixth
    row on."""
    region = connected_region(localizer, 21, 5)
    rng = np.random.default_rng(21)
    memory = LocalizationMemory()
    alone, pooled = [], []
    for _ in range(12):
        r = stealthy_row(localizer, region, rng, 5.0)
        alone.append(sorted(localizer.explain(r)[0]) == region)
        pooled.append(sorted(localizer.explain(r, None, memory)[0]) == region)
    assert sum(alone) <= 2
    assert not pooled[0]  # the first row of a run is localized on its own
    assert all(pooled[6:])
    assert len(memory) == localizer.config.pool_rows - 1


def test_a_run_flags_the_same_measurements_under_the_cell_penalty(
    localizer: RegionLocalizer,
) -> None:
    """Twelve measurements moved by 2.5-3.5 noise units on every row (new signs and sizes
    each row): one row flags at most half, the run nearly all from its sixth row on."""
    rng = np.random.default_rng(7)
    cols = rng.choice(localizer.m, 12, replace=False)
    truth = np.zeros(localizer.m, dtype=bool)
    truth[cols] = True
    memory = LocalizationMemory()
    for k in range(10):
        r = rng.standard_normal(localizer.m)
        r[cols] += rng.uniform(2.5, 3.5, len(cols)) * rng.choice([-1.0, 1.0], len(cols))
        alone = localizer.localize(r, None, None)
        pooled = localizer.localize(r, None, None, None, memory)
        assert np.count_nonzero(alone & truth) <= 6
        assert np.count_nonzero(pooled & ~truth) == np.count_nonzero(alone & ~truth)
        if k == 0:
            assert np.array_equal(alone, pooled)
        if k >= 5:
            assert np.count_nonzero(pooled & truth) >= 9


def test_a_replayed_row_or_another_localizer_ends_the_run(localizer: RegionLocalizer) -> None:
    rng = np.random.default_rng(0)
    memory = LocalizationMemory()
    for _ in range(3):
        localizer.localize(rng.standard_normal(localizer.m), None, None, None, memory)
    assert len(memory) == 3
    replay = np.zeros(localizer.m, dtype=bool)
    replay[:4] = True
    flagged = localizer.localize(rng.standard_normal(localizer.m), replay, None, None, memory)
    assert np.array_equal(flagged, replay) and len(memory) == 0
    localizer.localize(rng.standard_normal(localizer.m), None, None, None, memory)
    assert len(memory) == 1
    # a memory filled by another localizer (a model adapted since) starts a new run
    other = identity_localizer()
    other.localize(rng.standard_normal(other.m), None, None, None, memory)
    assert len(memory) == 1


def test_batch_and_live_localization_agree_and_a_clean_row_resets_the_run() -> None:
    """``judge`` row ``i`` equals ``judge_latest`` with a memory that saw rows ``0..i-1``;
    the memory is empty after every row judged clean, and pooling changes the flags of
    some rows of the two injected runs."""
    from detection.generate import generate_series
    from detection.models.detector import (
        judge,
        judge_latest,
        localization_memory,
        verdicts,
    )
    from detection.models.registry import load_shipped_model

    model = load_shipped_model("cigre_mv")
    x = generate_series("cigre_mv", 70, seed=5, workers=1).measured.copy()
    rng = np.random.default_rng(0)
    for start, stop in [(10, 24), (30, 44)]:  # two runs: the same 8 columns every row
        cols = rng.choice(x.shape[1], 8, replace=False)
        size = 0.02 * np.abs(x[:, cols]).mean(axis=0)
        for k in range(start, stop):
            x[k, cols] += rng.uniform(3.0, 10.0, 8) * rng.choice([-1.0, 1.0], 8) * size
    batch = judge(model, x)
    assert batch.attacked[10:24].all() and batch.attacked[30:44].all()
    assert not batch.attacked[24:30].any()
    memory = localization_memory(model)
    changed = 0
    for end in range(1, len(x) + 1):
        one = judge_latest(model, x[:end], None, memory)
        assert one.attacked == batch.attacked[end - 1]
        np.testing.assert_array_equal(one.flagged, batch.flagged[end - 1])
        assert (len(memory) > 0) == one.attacked
        alone = judge_latest(model, x[:end], None)  # no memory: the snapshot on its own
        changed += not np.array_equal(alone.flagged, one.flagged)
    assert changed > 0
    # verdicts continue a memory that saw the rows before the first one
    from detection.models.detector import residuals

    rows, cells = batch.rows, batch.cells
    resid = residuals(model, x)
    head = localization_memory(model)
    verdicts(model, rows[:15], cells[:15], resid=resid[:15], memory=head)
    assert len(head) == 5
    _, tail = verdicts(model, rows[15:], cells[15:], resid=resid[15:], memory=head)
    _, whole = verdicts(model, rows, cells, resid=resid)
    np.testing.assert_array_equal(tail, whole[15:])
    assert len(head) == 0  # the last row is clean
