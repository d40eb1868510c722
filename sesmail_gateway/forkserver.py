"""A fork server: child processes forked from a process that has everything imported.

A fresh interpreter per SMTP worker (multiprocessing's ``spawn``) imports
everything again, about 50 MiB each. A forked child shares its parent's
pages until it writes to them, so N workers cost little more than one. But
the daemon cannot fork once it runs threads (the runner's pool, /metrics)
and an event loop: a lock another thread held at the fork stays locked in
the child forever. So the daemon forks this server first, while it is one
thread with no event loop, no open socket and no lock on the data dir, and
the server, which stays single-threaded, forks each child on request.
``gc.freeze()`` before each fork keeps the collector from writing to the
shared objects (and so copying their pages).

Lifetimes: the server gets SIGKILL when the daemon dies (PR_SET_PDEATHSIG;
it also exits when its socket closes); each child gets SIGTERM when the
server dies, so a worker drains its sessions and exits. A worker left
behind would go on accepting mail that no runner delivers, and would share
the port with the next start's workers. The server blocks SIGTERM,
SIGINT and SIGHUP: the daemon handles those for the whole tree (systemd
sends SIGTERM to every process of the unit). If the server dies anyway,
nothing can be forked any more: ``fork`` raises OSError and the daemon
stops with exit status 1, for the service manager to start it afresh.

Protocol, over a ``socketpair(SOCK_SEQPACKET)``: the daemon sends the
child's index with the file descriptors for the child (SCM_RIGHTS); the
server answers with the new child's pid and a pidfd of it, which the daemon
polls for its exit and signals without a race against pid reuse. The
server reaps its children and logs an exit status that is not 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
REPLY_TIMEOUT = 30.0
"""Seconds the daemon waits for the server to answer a fork request (a fork takes milliseconds)."""

TREE_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
"""Signals the daemon handles for its whole tree; the server never acts on them."""

ChildMain = Callable[[int, list[int]], None]
"""What a child runs: ``(index, fds)``; it returns to exit 0 and raises to exit 1."""
MAX_FDS = 64
"""File descriptors one fork request may hand to the child."""


def die_with_parent(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies (even by kill -9)."""
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        ctypes.CDLL(name, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def set_name(name: str) -> None:
    """The process name ``ps``, ``top`` and ``pgrep`` show (15 characters at most)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])


class ForkServer:
    """The daemon's end: ask for a child, get a :class:`Child`."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock

    @classmethod
    def start(cls, child_main: ChildMain, name: str = "sesmail-forks", child_name: str = "child") -> ForkServer:
        """Fork the server; call it while this process runs one thread and no event loop.

        The server is called ``name`` in ``ps``, child N ``child_name-N``.
        """
        if threading.active_count() > 1:
            raise RuntimeError("fork server: must be started before any other thread")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        daemon = os.getpid()
        gc.collect()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                ours.close()
                _serve(theirs, daemon, child_main, name, child_name)
                status = 0
            except BaseException:  # noqa: BLE001 -- the child must never return into the daemon's code
                traceback.print_exc()
            finally:
                os._exit(status)
        theirs.close()
        ours.settimeout(REPLY_TIMEOUT)
        return cls(pid, ours)

    def fork(self, index: int, fds: Sequence[int]) -> Child:
        """Fork child ``index``, handing it ``fds``. OSError when the server is gone."""
        socket.send_fds(self._sock, [str(index).encode()], list(fds))
        reply, pidfds, _, _ = socket.recv_fds(self._sock, 16, 1)
        if not pidfds:
            raise ConnectionResetError("fork server: gone")
        return Child(int(reply), pidfds[0])

    def close(self, timeout: float = 5.0) -> None:
        """Let the server exit (its children should be gone by now) and reap it; blocks."""
        self._sock.close()
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    return
                time.sleep(0.02)


class Child:
    """A child of the server as the daemon sees it, through a pidfd (no race with pid reuse).

    The daemon is not its parent: it learns that the child exited (the pidfd
    turns readable), not the exit status, which the server logs.
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd

    def join(self, timeout: float | None = None) -> None:
        """Wait until the child has exited, or ``timeout`` seconds."""
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        poller.poll(None if timeout is None else int(timeout * 1000))

    def is_alive(self) -> bool:
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return not poller.poll(0)

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._pidfd)


def _serve(sock: socket.socket, daemon: int, child_main: ChildMain, name: str, child_name: str) -> None:
    set_name(name)
    die_with_parent(signal.SIGKILL)
    if os.getppid() != daemon:  # the daemon died before the line above
        return
    # Blocked, not ignored: a signal sent to a child before it sets its own handlers waits for them.
    signal.pthread_sigmask(signal.SIG_BLOCK, TREE_SIGNALS)
    children: dict[int, str] = {}
    signal.signal(signal.SIGCHLD, lambda *_: _reap(children))
    server = os.getpid()
    sock.settimeout(None)
    while True:
        request, fds, _, _ = socket.recv_fds(sock, 16, MAX_FDS)
        if not request:  # the daemon closed its end, or died
            return
        index = int(request)
        # SIGCHLD waits until the pidfd is open: a child reaped before that would leave no pid to open.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(sock, server, index, fds, child_main, f"{child_name}-{index}"))
        for fd in fds:
            os.close(fd)
        children[pid] = f"{child_name}-{index}"
        pidfd = os.pidfd_open(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        try:
            socket.send_fds(sock, [str(pid).encode()], [pidfd])
        finally:
            os.close(pidfd)


def _child(sock: socket.socket, server: int, index: int, fds: list[int], child_main: ChildMain, name: str) -> int:
    try:
        sock.close()
        # Until the child sets its own handlers, SIGTERM ends it (it has accepted nothing yet); SIGHUP
        # (re-read the rules: it is reading them now) and SIGINT (the daemon's to decide) do nothing.
        for signum in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for signum in TREE_SIGNALS - {signal.SIGTERM}:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        die_with_parent(signal.SIGTERM)
        if os.getppid() != server:
            return 1
        set_name(name)
        for fd in fds:
            os.set_inheritable(fd, False)
        child_main(index, fds)
        return 0
    except BaseException:  # noqa: BLE001 -- exit here, never return into the server's loop
        traceback.print_exc()
        return 1
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


def _reap(children: dict[int, str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        name = children.pop(pid, "child")
        code = os.waitstatus_to_exitcode(status)
        if code:
            log.error("workers: %s (pid %d) exited with %d", name, pid, code)
