"""The service processes' collector settings (security/heap.py). Each check runs in a
fresh interpreter: freezing is process-wide and must not leak into the test process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from security.heap import HeapSettler


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_settle_freezes_survivors_and_sets_the_service_thresholds() -> None:
    out = _run(
        """
        import gc
        from security.heap import settle_heap, YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD
        keep = [[i] for i in range(50_000)]  # long-lived containers
        s = settle_heap()
        assert s.frozen >= 50_000, s
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
        print("ok", s.frozen > 0, s.pause_s >= 0)
        """
    )
    assert out == "ok True True"


def test_frozen_objects_are_still_freed_by_reference_counting() -> None:
    out = _run(
        """
        import weakref
        from security.heap import settle_heap
        class Box: pass
        box = Box()
        ref = weakref.ref(box)
        settle_heap()
        del box
        print("freed" if ref() is None else "kept")
        """
    )
    assert out == "freed"


def test_a_cycle_frozen_alive_is_collected_by_the_full_settle_only() -> None:
    out = _run(
        """
        import weakref
        from security.heap import HeapSettler
        class Node: pass
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle, alive while frozen
        ref = weakref.ref(a)
        settler = HeapSettler(every_s=1.0, full_every=2)
        settler.settle()          # 1st: normal, freezes the cycle
        del a, b                  # now garbage, but only a cycle: refcounting cannot free it
        settler.settle()          # 2nd: normal, does not scan the frozen cycle
        after_normal = ref() is not None
        settler.settle()          # 3rd: full (every 2nd after the first)
        print(after_normal, ref() is None, settler.settles)
        """
    )
    assert out == "True True 3"


@pytest.mark.parametrize(("every_s", "full_every"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_settler_refuses_nonsense_intervals(every_s: float, full_every: int) -> None:
    with pytest.raises(ValueError, match="every_s"):
        HeapSettler(every_s, full_every)
