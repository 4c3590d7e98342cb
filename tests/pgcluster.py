"""A private PostgreSQL cluster for tests that must stop and restart the database server.

The machine's shared server on 127.0.0.1:5432 serves every other test, so a test that takes
PostgreSQL down starts its own cluster from the local server binaries instead:

    with PgCluster() as cluster:             # initdb, then start on a free loopback port
        url = cluster.create_database("nicflow")
        cluster.stop()                       # connections are refused from here on
        cluster.start()                      # same port, same data
    # stopped and deleted here

initdb refuses to run as root, so when the test runs as root every server command runs as the
`postgres` OS user through `runuser`, in a temporary directory that user owns.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

DEFAULT_BIN_DIR = Path(os.environ.get("NICFLOW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
DEFAULT_OS_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

# pg_ctl waits this long for the server to accept connections or to shut down.
PG_CTL_WAIT_SECONDS = 60
# Lines of the server log quoted in an error when a pg_ctl command fails.
LOG_TAIL_LINES = 30


class PgClusterError(RuntimeError):
    """A failed server command of the private cluster. The message contains its output and the server log."""


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when checked.

    Another process may take the port before the server binds it; start() then fails with
    the server log in its message.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class PgCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust authentication.

    `with PgCluster() as cluster` runs init() and start() on entry, and cleanup() on exit.
    The port stays the same across stop() and start(), so URLs handed out before an outage
    work again after it. Server settings trade durability for speed (fsync off), which is
    fine for a test database and for a clean stop, but the data does not survive a crash
    of the host.
    """

    def __init__(self, *, bin_dir: Path = DEFAULT_BIN_DIR, os_user: str = DEFAULT_OS_USER, port: int | None = None) -> None:
        self.bin_dir = Path(bin_dir)
        self.os_user = os_user
        self.port = port or free_loopback_port()
        self.base_dir: Path | None = None
        self.running = False

    # Paths and URLs

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_file(self) -> Path:
        return self._base() / "server.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """Return the SQLAlchemy URL of a database for the superuser. With `driver="postgresql"` it is a libpq URL."""
        return f"{driver}://{SUPERUSER}@{HOST}:{self.port}/{database}"

    # Lifecycle

    def init(self) -> None:
        """Create the temporary directory and run initdb in it (trust auth, UTF8, C locale)."""
        if self.base_dir is not None:
            raise PgClusterError(f"cluster already initialized in {self.base_dir}")
        for binary in ("initdb", "pg_ctl"):
            if not (self.bin_dir / binary).is_file():
                raise PgClusterError(
                    f"{self.bin_dir / binary} not found: install the PostgreSQL server binaries "
                    "or set NICFLOW_TEST_PG_BIN to their directory"
                )

        self.base_dir = Path(tempfile.mkdtemp(prefix="nicflow-pg-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam(self.os_user)
            os.chown(self.base_dir, account.pw_uid, account.pw_gid)

        self._run(
            "initdb",
            "--pgdata", str(self.data_dir),
            "--username", SUPERUSER,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",
        )

        # The socket goes into the cluster's own directory, so the shared cluster's socket
        # directory is never touched. Appended lines override the defaults above them.
        settings = {
            "port": str(self.port),
            "listen_addresses": f"'{HOST}'",
            "unix_socket_directories": f"'{self.base_dir}'",
            "fsync": "off",
            "full_page_writes": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as config:
            config.write("\n# Set by tests/pgcluster.py\n")
            for name, value in settings.items():
                config.write(f"{name} = {value}\n")
        logger.info("private PostgreSQL cluster initialized in %s for port %s", self.base_dir, self.port)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            "pg_ctl", "start",
            "--pgdata", str(self.data_dir),
            "--log", str(self.log_file),
            "--wait", "--timeout", str(PG_CTL_WAIT_SECONDS),
        )
        self.running = True
        logger.info("private PostgreSQL cluster started on %s:%s", HOST, self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until it is down.

        `mode` is pg_ctl's shutdown mode: "fast" ends open sessions and shuts down cleanly,
        "immediate" kills the server as a crash would, so the next start runs crash recovery.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"invalid shutdown mode {mode!r}: expected smart, fast or immediate")
        self._run(
            "pg_ctl", "stop",
            "--pgdata", str(self.data_dir),
            "--mode", mode,
            "--wait", "--timeout", str(PG_CTL_WAIT_SECONDS),
        )
        self.running = False
        logger.info("private PostgreSQL cluster on port %s stopped (%s)", self.port, mode)

    def create_database(self, name: str) -> str:
        """Create a database in the running cluster and return its SQLAlchemy URL."""
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def cleanup(self) -> None:
        """Stop the server if it runs and delete the cluster's directory. A second call does nothing."""
        if self.base_dir is None:
            return
        if self.running:
            try:
                self.stop(mode="immediate")
            except PgClusterError:
                # The directory is deleted anyway, and the logged error names the port of a server that may still run.
                logger.exception("stopping the private PostgreSQL cluster on port %s failed", self.port)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        logger.info("private PostgreSQL cluster directory %s deleted", self.base_dir)
        self.base_dir = None

    def __enter__(self) -> PgCluster:
        self.init()
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.cleanup()

    # Helpers

    def _base(self) -> Path:
        if self.base_dir is None:
            raise PgClusterError("cluster not initialized: call init() or use PgCluster as a context manager")
        return self.base_dir

    def _run(self, binary: str, *arguments: str) -> None:
        """Run a server binary as the cluster's OS user. Raise PgClusterError with its output and the log when it fails."""
        command = [str(self.bin_dir / binary), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.os_user, "--", *command]

        # The working directory and HOME must be readable by the OS user, or initdb and
        # pg_ctl warn that they cannot change into root's home.
        environment = {**os.environ, "HOME": str(self._base()), "LC_ALL": "C"}
        completed = subprocess.run(
            command,
            cwd=self._base(),
            env=environment,
            capture_output=True,
            text=True,
            timeout=PG_CTL_WAIT_SECONDS + 30,
            check=False,
        )
        if completed.returncode != 0:
            raise PgClusterError(
                f"{' '.join(command)} failed with exit code {completed.returncode}\n"
                f"stdout: {completed.stdout.strip()}\nstderr: {completed.stderr.strip()}\n"
                f"server log (last {LOG_TAIL_LINES} lines):\n{self._log_tail()}"
            )
        logger.debug("%s output: %s", binary, completed.stdout.strip())

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])
