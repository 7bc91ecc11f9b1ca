"""Atomic, lock-guarded file replacement (invariant 5): the one way coord writes a user's file.

Lock a hidden sidecar `.<file>.lock`, never the target: `os.replace` swaps the inode, so a lock held on the
target would guard a file that no longer exists under that name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from coord.errors import Conflict

LOCK_TIMEOUT_SECONDS = 30


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(path: Path) -> str | None:
    """The content hash of `path`, or None when it does not exist."""
    try:
        return sha256_bytes(path.read_bytes())
    except FileNotFoundError:
        return None


def lock_for(path: Path) -> FileLock:
    # Hidden, so it does not clutter a user's project folder or look like an agent file.
    return FileLock(str(path.parent / f".{path.name}.lock"), timeout=LOCK_TIMEOUT_SECONDS)


def backup(path: Path, backup_dir: Path | None = None) -> Path | None:
    """Copy `path` to a timestamped backup beside it (or into backup_dir); None if it did not exist."""
    if not path.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target_dir = backup_dir or path.parent
    target_dir.mkdir(parents=True, exist_ok=True)
    dest = target_dir / f"{path.name}.{stamp}.bak"
    shutil.copy2(path, dest)
    return dest


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` via temp file + fsync + rename + fsync(folder). Caller holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def update_file(
    path: Path,
    transform: Callable[[bytes | None], bytes],
    *,
    make_backup: bool = True,
    retries: int = 5,
    backup_dir: Path | None = None,
) -> Path | None:
    """Read-transform-replace `path` under its sidecar lock; returns the backup path (if any).

    backup_dir: where the timestamped backup goes (default: beside `path`); coord passes a folder under
    its state dir so a user's project does not collect `.bak` files.

    Programs that do not take our lock (Claude Desktop rewrites its own config) may change the file
    while we transform it, so the hash is compared again just before the rename and the transform is
    redone on a change. `transform` gets the current bytes (None if absent) and may raise to abort:
    the target is then left exactly as it was.
    """
    with lock_for(path):
        for _ in range(retries):
            before = path.read_bytes() if path.exists() else None
            new = transform(before)
            now = path.read_bytes() if path.exists() else None
            if now != before:
                continue
            saved = backup(path, backup_dir) if (make_backup and before is not None and new != before) else None
            if new != before:
                write_atomic(path, new)
            return saved
    raise Conflict(f"{path} kept changing while coord tried to update it; try again")
