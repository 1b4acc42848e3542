"""A PostgreSQL cluster of a test's own, in a temporary folder, on a free loopback port:
``initdb`` and ``pg_ctl`` from the installed PostgreSQL, so a test may stop and start
the database under running instances without touching any other cluster.

PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` user,
in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.fake_upstream import free_port

# Long enough for a busy machine; pg_ctl waits for the server itself (-w).
PG_CTL_SECONDS = 30


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs, or those on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def unavailable() -> str | None:
    """Why no cluster can be made here, or None when one can."""
    if _bin_dir() is None:
        return "initdb and pg_ctl are not installed (the postgresql server package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and PostgreSQL needs a postgres user to run as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to run PostgreSQL as postgres"
    return None


class Cluster:
    """``initdb`` at construction; :meth:`start`, :meth:`stop` and :meth:`remove`."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None, unavailable()
        self._bin = bin_dir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tokendesk-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        self.log_path = self.folder / "server.log"
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self._bin / program), *args],
            capture_output=True,
            text=True,
            timeout=PG_CTL_SECONDS + 10,
            # The postgres user may not read the caller's working directory.
            cwd=self.folder,
        )
        if done.returncode != 0:
            raise AssertionError(f"{program} failed:\n{done.stdout}\n{done.stderr}\n{self.log}")

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        # No fsync: the cluster lives for one test and the machine does not crash
        # under it (a stopped server loses nothing it acknowledged all the same). The
        # socket goes in the folder, never where the machine's cluster has its own.
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(PG_CTL_SECONDS),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session at once (what a restart does),
        ``immediate`` as a crash would."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(PG_CTL_SECONDS), "stop"
        )

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
