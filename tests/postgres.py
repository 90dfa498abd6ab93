"""A private PostgreSQL server for tests and benchmarks: initdb into a temp dir, listen on
127.0.0.1 only, stop and delete it at the end.

    with PostgresServer() as pg:            # fsync=True for benchmarks
        url = pg.url(pg.create_database("runs"))

PostgreSQL refuses to run as root, so when we are root every server command runs as the
`postgres` OS user (`runuser -u postgres --`) and the data directory belongs to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

SUPERUSER = "postgres"
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 30
_CONNECT_TIMEOUT_S = 10
_PORT_ATTEMPTS = 3  # a free port can be taken by another process before the server binds it


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server would not start; the message says why."""


def find_pg_bin() -> Path:
    """The directory holding `initdb` and `pg_ctl`: from PATH, else Debian's package layout."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    # Debian's `postgresql` package keeps them out of PATH; take the newest version.
    found = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda d: _version_key(d.parent.name),
        reverse=True,
    )
    for directory in found:
        if (directory / "pg_ctl").exists() and (directory / "initdb").exists():
            return directory
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found: no pg_ctl/initdb on PATH or under "
        "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql; `make test` does this)"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One private PostgreSQL server on 127.0.0.1 and a free port, superuser `postgres` with a
    random password (scram-sha-256). Starts in `__init__`; `stop()` (or leaving the `with`
    block) shuts it down and deletes its directory.

    `fsync=False` (the default) suits tests: what they check is surviving process death,
    which fsync does not affect; only power loss does. Benchmarks pass `fsync=True`.
    """

    def __init__(self, *, fsync: bool = False, max_connections: int = 300) -> None:
        self._bin = find_pg_bin()
        self._as_postgres = os.geteuid() == 0
        self._password = secrets.token_urlsafe(24)
        self._stopped = False
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="rayfleet-pg-"))
        try:
            self._chown_to_server_user(self.dir)
            self._initdb()
            self._configure(fsync=fsync, max_connections=max_connections)
            self._start()
        except BaseException:
            self.stop()
            raise

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def __repr__(self) -> str:  # never the password
        return f"PostgresServer(127.0.0.1:{self.port}, dir={str(self.dir)!r})"

    def url(self, dbname: str = "postgres") -> str:
        """`postgresql://postgres:<password>@127.0.0.1:<port>/<dbname>`. Holds the password:
        do not log it."""
        return (
            f"postgresql://{SUPERUSER}:{quote(self._password, safe='')}"
            f"@127.0.0.1:{self.port}/{quote(dbname, safe='')}"
        )

    def create_database(self, name: str) -> str:
        """Create an empty UTF8 database and return its name."""
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connections still open to it."""
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def start(self) -> None:
        """Start the server again on its data directory and port, as a supervisor would after
        it crashed (a `kill -9` of its postmaster: it recovers from its WAL). Its backends must
        be gone first: a survivor still holds the shared memory, and the server refuses to
        start."""
        assert not self._stopped, "the server was stopped and its directory deleted"
        self._start(self.port)

    def postmaster_pid(self) -> int:
        """The pid of the running server's postmaster (the first line of postmaster.pid)."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Shut the server down (fast: roll back open transactions) and delete its directory.
        Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._shutdown()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # The steps.

    def _initdb(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self._password + "\n")
        pwfile.chmod(0o600)
        self._chown_to_server_user(pwfile)
        try:
            self._run(
                "initdb",
                f"--pgdata={self.data_dir}",
                f"--username={SUPERUSER}",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",  # present everywhere, and sorts the same on every machine
                "--no-instructions",
                "--no-sync",  # a throwaway cluster: no need to flush its initial files to disk
                timeout_s=_START_TIMEOUT_S,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _configure(self, *, fsync: bool, max_connections: int) -> None:
        self.socket_dir.mkdir(mode=0o700)
        self._chown_to_server_user(self.socket_dir)
        # Appended to postgresql.conf: later lines win. The port is passed at start.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "on" if fsync else "off",
            "max_connections": str(max_connections),
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# rayfleet tests\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start(self, port: int = 0) -> None:
        """Start on `port`, or on a free port (another if it was taken meanwhile) if 0."""
        self.log_file.touch()
        self._chown_to_server_user(self.log_file)
        failure = ""
        for _ in range(_PORT_ATTEMPTS if port == 0 else 1):
            candidate = port or _free_port()
            try:
                self._run(
                    "pg_ctl",
                    "start",
                    "--wait",
                    f"--timeout={_START_TIMEOUT_S}",
                    f"--pgdata={self.data_dir}",
                    f"--log={self.log_file}",
                    f"--options=-p {candidate}",
                    timeout_s=_START_TIMEOUT_S + 10,
                )
            except PostgresUnavailable as e:
                failure = f"{e}\n--- server log ---\n{self._log_tail()}"
                if "already in use" not in failure:
                    break  # not a port race: another port will not help
                continue
            self.port = candidate
            return
        raise PostgresUnavailable(f"PostgreSQL did not start: {failure}")

    def _shutdown(self) -> None:
        for mode in ("fast", "immediate"):
            try:
                self._run(
                    "pg_ctl",
                    "stop",
                    f"--pgdata={self.data_dir}",
                    f"--mode={mode}",
                    "--wait",
                    f"--timeout={_STOP_TIMEOUT_S}",
                    timeout_s=_STOP_TIMEOUT_S + 10,
                )
                return
            except PostgresUnavailable:
                continue
        # pg_ctl could not stop it: kill the postmaster so no server outlives the session.
        try:
            os.kill(self.postmaster_pid(), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    # Helpers.

    def _admin(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)

    def _run(self, tool: str, *args: str, timeout_s: float) -> None:
        command = [str(self._bin / tool), *args]
        if self._as_postgres:
            if not shutil.which("runuser"):
                raise PostgresUnavailable("running as root needs `runuser` to drop to `postgres`")
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        try:
            # cwd: the server user may not be allowed into ours.
            done = subprocess.run(
                command,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise PostgresUnavailable(f"{tool} {args[0]} timed out after {timeout_s}s") from e
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise PostgresUnavailable(f"{tool} failed (exit {done.returncode}): {output}")

    def _chown_to_server_user(self, path: Path) -> None:
        if not self._as_postgres:
            return
        try:
            user = pwd.getpwnam(SUPERUSER)
        except KeyError as e:
            raise PostgresUnavailable(
                "running as root, but there is no `postgres` OS user to run the server as"
            ) from e
        os.chown(path, user.pw_uid, user.pw_gid)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
