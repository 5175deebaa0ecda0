"""Unary calls (Enroll, Renew) run off the event loop within the server's own deadline."""

from __future__ import annotations

import threading

import pytest

from control_plane.transports.grpc_server import within_deadline
from security.refusals import Reason, RefusedError


async def test_work_within_the_deadline_returns_its_result() -> None:
    assert await within_deadline(1.0, lambda: 42) == 42


async def test_work_past_the_deadline_is_refused_as_unavailable() -> None:
    release = threading.Event()
    try:
        with pytest.raises(RefusedError) as caught:
            await within_deadline(0.05, lambda: release.wait(5))
        assert caught.value.refusal.reason is Reason.UNAVAILABLE
    finally:
        release.set()
