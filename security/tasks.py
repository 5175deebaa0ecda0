"""Async task lifecycle shared by every Gridfort service (control plane and edge).

Cancelling a child task and waiting for it must never swallow the *caller's*
own cancellation, or a service can no longer be stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def reap(task: asyncio.Future[Any] | None, *, patience_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has finished; re-raise our own cancellation.

    A task that swallows a cancellation (``asyncio.wait_for`` can, on Python 3.11,
    when the cancel races with its inner future) is cancelled again every
    ``patience_s`` seconds instead of being waited for forever.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=patience_s)
    try:
        task.result()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # noqa: S110 - the child's own failure is not the caller's concern
        pass
