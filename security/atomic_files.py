"""Files written whole or not at all, created with their final permissions.

Secrets are never on disk under looser permissions, not even for an instant:
the temp file is created with ``O_EXCL`` and its final mode (never chmod-ed
afterwards), filled, fsync-ed, then renamed (or hard-linked) into place in the
same directory, and the directory is fsync-ed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes, mode: int, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode`` (minus the umask).

    With ``overwrite=False`` the file is linked into place instead of renamed,
    so an existing file is never replaced (FileExistsError instead).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path, data, mode)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def _link_no_clobber(tmp: Path, path: Path, data: bytes, mode: int) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # No hard links on this filesystem: exclusive create still never clobbers,
        # at the price of atomicity (a crash can leave a short file, which readers detect).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def fsync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
