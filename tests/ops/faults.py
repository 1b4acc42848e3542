"""Storage faults a test can cause without root's mount rights: a SQLite database file
made read-only to every process, root included (``chattr +i``)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def database_file(db_url: str) -> Path:
    return Path(db_url.split(":///", 1)[1])


@contextlib.contextmanager
def immutable(db_url: str) -> Iterator[None]:
    """The database file and its write-ahead log made immutable for the block; skips
    the test where that cannot be done (no chattr, no CAP_LINUX_IMMUTABLE, a file
    system without the attribute).

    The shared-memory index (``-shm``) stays writable: SQLite maps it, and a write to
    an immutable mapping kills the process with SIGBUS, which is no test of tokendesk.
    """
    path = database_file(db_url)
    files = [str(p) for p in (path, Path(f"{path}-wal")) if p.exists()]
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: no way to make the file read-only to root")
    done = subprocess.run(["chattr", "+i", *files], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make the database file immutable here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
