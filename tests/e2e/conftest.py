"""End-to-end test support: if a test hangs, show where every asyncio task is waiting."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

HANG_REPORT_AFTER_S = 45.0


async def _report_hang() -> None:
    await asyncio.sleep(HANG_REPORT_AFTER_S)
    print(
        f"\n--- asyncio tasks still running after {HANG_REPORT_AFTER_S:.0f} s ---", file=sys.stderr
    )
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        try:
            for frame in task.get_stack(limit=12):
                code = frame.f_code
                print(f"    {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
        except Exception as e:  # a C-level coroutine has no Python frames
            print(f"    (no stack: {e!r})", file=sys.stderr)


@pytest.fixture(autouse=True)
async def hang_reporter() -> AsyncIterator[None]:
    watchdog = asyncio.ensure_future(_report_hang())
    try:
        yield
    finally:
        watchdog.cancel()
