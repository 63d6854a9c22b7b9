"""``abkit grpc --processes N``: N server processes on one port, and their supervisor.

A Python process serves RPCs on about one core: its handlers are coroutines on one event loop,
and the Python work of every call holds the GIL. To use more cores, ``abkit grpc`` starts N
copies of itself that each bind the same port with ``SO_REUSEPORT`` (Linux); the kernel spreads
incoming connections over them (by a hash of the connection, so a handful of clients may land
unevenly).
This is grpcio's documented way to use several cores: a server must not be created before a
``fork``, so the copies are started as fresh interpreters, never forked from a process that has
touched gRPC.

The supervisor holds no gRPC object and no store connection. It relays the first signal
(SIGTERM, SIGINT) to every process and exits 0 when they all did; when a process dies on its own
it stops the others and exits 1, so the container or unit restarts the whole server -- partial
capacity behind one health endpoint would hide the failure. Each process is a full server:
its own config refresher, journal (``<spool>/process-<i>``; process 0 uses the root itself, so a
single-process server and process 0 share it), health and reflection services. A journal left
by a process index that no longer exists (the count went down) is drained by process 0
(:func:`orphan_journals`, :meth:`abkit.runtime.Runtime.adopt_journals`), so nothing accepted is
stranded.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from abkit.errors import ValidationError

log = logging.getLogger(__name__)

PROCESS_DIR_PREFIX = "process-"
STARTUP_TIMEOUT_SECONDS = 60.0
"""How long a process may take to report that it listens (imports, first config load)."""


def process_spool(root: str, index: int) -> str:
    """Journal directory of server process ``index``: the configured root for process 0."""
    return root if index == 0 else str(Path(root) / f"{PROCESS_DIR_PREFIX}{index}")


def orphan_journals(root: str, count: int) -> list[str]:
    """The journal directories of process indexes >= ``count`` (the count went down): process
    0 (or a single-process server) drains them into the store, so nothing accepted by a
    process of an earlier, larger server is stranded."""
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for directory in sorted(base.glob(f"{PROCESS_DIR_PREFIX}*")):
        suffix = directory.name.removeprefix(PROCESS_DIR_PREFIX)
        if suffix.isdigit() and int(suffix) >= count:
            found.append(str(directory))
    return found


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::]:port``) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValidationError("ABKIT_GRPC_ADDRESS", f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening ``SO_REUSEPORT`` socket on ``host:port`` (a free port for 0): the
    port stays ours while the processes bind it too; the kernel routes connections only to
    listening sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"could not bind the gRPC server to {host}:{port}: {exc.strerror}") from None
    return sock


class StartupFailed(RuntimeError):
    """A server process exited or hung before listening; ``code`` is its exit code (or 1), so a
    configuration error keeps its exit code (2) through the supervisor."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code if code > 0 else 1


class Supervisor:
    """Starts ``count`` copies of ``abkit grpc`` on one port and watches them."""

    def __init__(
        self,
        count: int,
        address: str,
        *,
        env: dict[str, str],
        verbose: bool = False,
        out: IO[str] | None = None,
    ) -> None:
        self.count = count
        self.host, port = split_address(address)
        self._reserved = reserve_port(self.host, port)
        self.port: int = self._reserved.getsockname()[1]
        self._env = env
        self._verbose = verbose
        self._out = out or sys.stdout
        self.processes: list[subprocess.Popen[str]] = []
        self._stopping = threading.Event()
        self._previous_handlers: dict[int, Any] = {}

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _command(self, index: int) -> list[str]:
        verbose = ["--verbose"] if self._verbose else []
        where = ["--address", self.address, "--process-index", f"{index}/{self.count}"]
        return [sys.executable, "-m", "abkit", *verbose, "grpc", *where]

    def start(self) -> None:
        """Start every process; return once each reports that it listens.

        From here until :meth:`wait` returns, SIGTERM and SIGINT are this supervisor's: one
        arriving while the processes start still stops them all.
        """

        def on_signal(_signum: int, _frame: Any) -> None:
            self._stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, on_signal)
        for index in range(self.count):
            proc = subprocess.Popen(
                self._command(index),
                stdout=subprocess.PIPE,
                text=True,
                env=self._env,
            )
            self.processes.append(proc)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        for index, proc in enumerate(self.processes):
            line = _first_line(proc, deadline)
            if not line:
                # End of output without a line: the process is exiting; its code, before stop()
                # (which ends them all). EOF can come before the exit status does: wait for it.
                code = _exit_code(proc) if line == "" else None
                self.stop()
                if code is not None:
                    raise StartupFailed(
                        f"gRPC process {index} exited with code {code} before listening", code
                    )
                raise StartupFailed(
                    f"gRPC process {index} did not listen within {STARTUP_TIMEOUT_SECONDS:g} s", 1
                )
            threading.Thread(target=_relay, args=(proc, self._out), daemon=True).start()

    def wait(self) -> int:
        """Until a signal or a process's death; stop all; the exit code for the supervisor."""
        try:
            died: tuple[int, subprocess.Popen[str]] | None = None
            while not self._stopping.wait(0.2):
                died = next(
                    ((i, p) for i, p in enumerate(self.processes) if p.poll() is not None), None
                )
                if died is not None:
                    break
            if died is not None:
                index, proc = died
                log.error(
                    "gRPC process %d (pid %d) exited with code %s; stopping the others",
                    index,
                    proc.pid,
                    proc.returncode,
                )
            codes = self.stop()
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
        if died is not None:
            return 1
        return 0 if all(code == 0 for code in codes) else 1

    def stop(self, timeout: float = 120.0) -> Sequence[int | None]:
        """SIGTERM every live process (each drains gracefully), wait; their exit codes."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for proc in self.processes:
            try:
                codes.append(proc.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("gRPC process pid %d did not stop in %g s; killing it", proc.pid, timeout)
                proc.kill()
                codes.append(proc.wait())
        self._reserved.close()
        return codes


def _first_line(proc: subprocess.Popen[str], deadline: float) -> str | None:
    """The process's first line of output (its "listening" line); ``""`` if its output ended
    first (it is exiting), None if the deadline passed."""
    stdout = proc.stdout
    assert stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    return result[0] if result else None


def _exit_code(proc: subprocess.Popen[str], timeout: float = 10.0) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:  # closed its output but lives on: treat as hung
        return None


def _relay(proc: subprocess.Popen[str], out: IO[str]) -> None:
    """Copy a process's later output (there is normally none) so its pipe never fills."""
    assert proc.stdout is not None
    for line in proc.stdout:
        out.write(line)
        out.flush()


def watch_supervisor(supervisor_pid: int, interval: float = 1.0) -> threading.Thread:
    """In a server process: stop gracefully (SIGTERM to ourselves) if the supervisor is gone --
    killed with SIGKILL, it could not relay a signal, and the port must not stay half-served by
    processes nobody watches."""

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(interval)
        log.error("the supervisor (pid %d) is gone; stopping", supervisor_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="abkit-supervisor-watch", daemon=True)
    thread.start()
    return thread


def child_environment(database_url: str) -> dict[str, str]:
    """The processes' environment: ours, with the store URL as the supervisor resolved it (it
    may have come from ``--database-url``)."""
    return {**os.environ, "ABKIT_DATABASE_URL": database_url}
