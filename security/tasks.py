"""Async task lifecycle shared by every Gridfort service (control plane and edge).

Cancelling a child task and waiting for it must never swallow the *caller's*
own cancellation, or a service can no longer be stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def reap(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished; re-raise our own cancellation."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: S110 - the child's own failure is not the caller's concern
        pass
