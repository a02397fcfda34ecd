"""Shared plumbing for the throwaway servers: free ports, waiting, process control."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server could not be set up or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.1)


def find_binary(name: str, *dirs: str) -> str:
    """Path of an executable, also looking in sbin dirs that non-root PATHs lack."""
    path = os.pathsep.join([*dirs, os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if not found:
        raise ServerError(f"{name} not found; run scripts/install")
    return found


class Server:
    """One server subprocess with a private data dir, logging to <data_dir>/<name>.log.

    Subclasses provide `command()`, and optionally `init()` (one-time data dir
    setup), `environ()` and `ready()`. When running as root, the data dir is
    handed to `system_user`, and the process runs as that user if `demote`.
    """

    name = "server"
    system_user: str | None = None
    demote = True
    stop_signal = signal.SIGTERM
    start_timeout = 60.0

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike | None = None):
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"cdc-{self.name}-")).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen | None = None
        self._initialized = False
        self._log_start = 0

    # -- hooks -------------------------------------------------------------
    def init(self) -> None:
        """Prepare the data dir; called once before the first start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        return {}

    def ready(self) -> bool:
        return port_open(HOST, self.port)

    # -- process control ---------------------------------------------------
    @property
    def user(self) -> str | None:
        """The system user owning the data dir, when we are root and need one."""
        return self.system_user if os.geteuid() == 0 else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._exited()

    def run(self, args: list[str], timeout: float = 120) -> None:
        """Run a set-up command to completion, output to the log; raise with the log tail on failure."""
        proc = self._spawn(args)
        rc: int | str
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        if rc != 0:
            raise ServerError(f"{self.name}: `{' '.join(args)}` failed ({rc})\n{self.log_tail()}")

    def start(self, timeout: float | None = None) -> Self:
        """Start the server (initialising the data dir the first time) and wait until it is ready."""
        if self.running:
            return self
        self._reap()
        if self.user:
            shutil.chown(self.data_dir, self.user, self.user)
        if not self._initialized:
            self.init()
            self._initialized = True
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = self._spawn(self.command())
        timeout = timeout or self.start_timeout
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._exited():
                self._reap()
                raise ServerError(f"{self.name} exited during start-up\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"{self.name} not ready after {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown; SIGKILL if it takes longer than timeout."""
        if self.running:
            os.kill(self._proc.pid, self.stop_signal)
            deadline = time.monotonic() + timeout
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server and everything it spawned (a crash, as far as the data dir knows)."""
        self._reap()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and delete the data dir if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        return "\n".join([f"--- last lines of {self.log_path} ---", *text[-lines:]])

    def log_since_start(self) -> str:
        """What the server logged since the last start()."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    # -- internals ---------------------------------------------------------
    def _spawn(self, args: list[str]) -> subprocess.Popen:
        env = {**os.environ, **self.environ()}
        as_user: dict[str, Any] = {}
        if self.user and self.demote:
            as_user = {"user": self.user, "group": self.user, "extra_groups": []}
            env["HOME"] = str(self.data_dir)
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, env=env, start_new_session=True, **as_user,
            )

    def _exited(self) -> bool:
        """Has the main process exited? (Leaves it unreaped, so its group id stays ours.)"""
        if self._proc.returncode is not None:
            return True
        return os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def _reap(self) -> None:
        """SIGKILL what is left of our process group, then collect the main process."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
        self._proc = None
