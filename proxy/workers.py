"""Several server processes on one port (``server.workers``).

One Python process is bound to one core by the GIL, so throughput beyond a core needs processes.
The main process binds the port and starts ``workers - 1`` ingest workers, each of which binds it
too, all with SO_REUSEPORT: the kernel spreads new connections evenly over the processes. (With one
inherited socket, whichever process is idle first takes the connection, and under a burst of
keep-alive connections one process ends up with nearly all of them.)
Each worker runs the same ingest path on its own spool (role "ingest": appends only; the spool
serialises writers of several processes itself), and after each commit writes the spool's commit
token to a pipe, so the delivery workers in the main process see new events at once. Only the main
process runs delivery and the spool's housekeeping.

A worker that exits unexpectedly is started again. A worker whose parent dies (even by SIGKILL)
sees end-of-file on its stdin and shuts down gracefully: requests in flight are committed and
answered, then it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import structlog

from proxy.spool import Spool

log = structlog.get_logger("trackrelay.workers")

# A record on the notify pipe of an ingest worker: the spool's commit token (proxy/spool/base.py
# Spool.on_commit), or -index when worker ``index`` is up. 8 bytes, so each write is atomic on a pipe.
NOTIFY_RECORD = struct.Struct("<q")


def commit_notifier(notify_fd: int):  # type: ignore[no-untyped-def]
    """In an ingest worker: the spool's on_commit, writing each commit token to the pipe."""
    def notify(token: int) -> None:
        with contextlib.suppress(OSError):  # a full pipe: the main process's periodic refresh catches up
            os.write(notify_fd, NOTIFY_RECORD.pack(token))
    return notify


def listen_socket(host: str, port: int, wait: float = 10.0) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT, so the other server processes can bind the same
    port. A port held by something else is retried for ``wait`` seconds (a previous run that is
    still shutting down), then the error is raised."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return socket.create_server((host, port), backlog=2048, reuse_port=True)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Supervisor:
    """Starts, watches and stops the ingest worker processes of the main process."""

    def __init__(self, config_path: str, count: int, sock: socket.socket, spool: Spool,
                 shutdown_grace: float) -> None:
        self.config_path = config_path
        self.count = count
        self.sock = sock
        self.spool = spool
        self.grace = shutdown_grace
        self.procs: list[subprocess.Popen | None] = [None] * count
        self._notify_r, self._notify_w = os.pipe()
        os.set_blocking(self._notify_r, False)
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.ready: set[int] = set()  # worker indexes that reported being up

    def _spawn(self, index: int) -> subprocess.Popen:
        host, port = self.sock.getsockname()[:2]
        notify = self._notify_w
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "ingest-worker", "--config", self.config_path,
             "--host", host, "--port", str(port), "--notify-fd", str(notify), "--index", str(index + 1)],
            pass_fds=(notify,), stdin=subprocess.PIPE, close_fds=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches the main process, which stops them
        )
        self.ready.discard(index + 1)
        log.info("worker_started", worker=index + 1, pid=proc.pid)
        return proc

    def _on_notify(self) -> None:
        try:
            data = os.read(self._notify_r, 65536)
        except BlockingIOError:
            return
        usable = len(data) - len(data) % NOTIFY_RECORD.size
        newest = 0
        for (value,) in NOTIFY_RECORD.iter_unpack(data[:usable]):
            if value < 0:  # a worker reporting that it is up: -index
                self.ready.add(-value)
            newest = max(newest, value)
        if newest:
            self.spool.observe_commit(newest)

    async def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._notify_r, self._on_notify)
        for i in range(self.count):
            self.procs[i] = self._spawn(i)
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        restarts: dict[int, float] = {}
        while not self._stopping:
            await asyncio.sleep(0.5)
            for i, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None or self._stopping:
                    continue
                # at most one restart a second per worker, so a worker that cannot start does not spin
                if time.monotonic() - restarts.get(i, 0.0) < 1.0:
                    continue
                log.error("worker_exited", worker=i + 1, pid=proc.pid, code=proc.returncode)
                restarts[i] = time.monotonic()
                self.procs[i] = self._spawn(i)

    def forward_sighup(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)

    def problems(self) -> list[str]:
        return [f"ingest worker {i + 1} not up" for i, p in enumerate(self.procs)
                if p is None or p.poll() is not None or (i + 1) not in self.ready]

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        running = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                await asyncio.to_thread(proc.wait, self.grace + 5)
            except subprocess.TimeoutExpired:
                log.error("worker_killed", pid=proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for spawned in self.procs:
            if spawned is not None and spawned.stdin is not None:
                spawned.stdin.close()
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._notify_r)
        self._on_notify()  # the last commits of the workers that just stopped
        os.close(self._notify_r)
        os.close(self._notify_w)


def report_ready(notify_fd: int, index: int) -> None:
    """In a worker, once it serves: tell the main process (its /readyz waits for every worker)."""
    os.write(notify_fd, NOTIFY_RECORD.pack(-index))


def watch_parent(loop: asyncio.AbstractEventLoop) -> None:
    """In a worker: shut down gracefully when the parent is gone (stdin reaches end-of-file)."""
    os.set_blocking(0, False)

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(0)
            log.warning("parent_gone_shutting_down", pid=os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(0, on_stdin)
