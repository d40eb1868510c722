"""CPU time and system calls of a server's process tree, for the accept benchmark.

Two measurements, both taken around the measured phase only (never start-up,
warm-up or shutdown):

* **CPU** -- :func:`sample_tree` reads ``utime + stime`` (and ``cutime +
  cstime``, the CPU of children it has reaped) of a process and every
  descendant from ``/proc/<pid>/stat``; :func:`cpu_delta` subtracts two
  samples per process, so a process that started in between counts from
  zero, and one that exited and was reaped still counts through its
  parent's ``cutime``.
* **System calls** -- :class:`StraceCounter` attaches ``strace -c -f`` to
  the tree's processes (every thread, and every child forked after), and on
  :meth:`StraceCounter.stop` interrupts it so it detaches and writes its
  summary table, which :func:`parse_strace_summary` reads.  ptrace makes
  every system call slower, so the rate and CPU of a traced run are not the
  untraced figures.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""Units of the ``/proc/<pid>/stat`` CPU fields per second (USER_HZ, 100 on Linux)."""
STRACE_ATTACH_TIMEOUT = 30.0
STRACE_STOP_TIMEOUT = 30.0
DURABILITY_CALLS = ("fsync", "fdatasync", "syncfs", "sync", "sync_file_range", "rename", "renameat",
                    "renameat2", "link", "linkat", "unlink", "unlinkat", "mkdir", "mkdirat")
"""System calls worth showing per message even when they are not among the most frequent."""


class StraceError(Exception):
    """strace could not attach, or did not write its summary."""


# --------------------------------------------------------------------------- /proc/<pid>/stat


@dataclass(frozen=True)
class ProcCpu:
    """One process's line of ``/proc/<pid>/stat``, reduced to what the benchmark needs (seconds)."""

    pid: int
    comm: str
    ppid: int
    own: float
    """``utime + stime``: CPU the process itself used, all its threads included."""
    reaped: float
    """``cutime + cstime``: CPU of the children it has waited for."""


def parse_stat(text: str) -> ProcCpu:
    """Parse the text of ``/proc/<pid>/stat``; raise ValueError when it is not one.

    ``comm`` sits in parentheses and may itself hold spaces and parentheses,
    so the fields are counted from its last closing parenthesis.
    """
    head, close, tail = text.rpartition(")")
    pid_text, open_, comm = head.partition(" (")
    fields = tail.split()
    if not close or not open_ or len(fields) < 15:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    # After comm: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime (fields 3..17 of proc(5)).
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcCpu(int(pid_text), comm, int(fields[1]), (utime + stime) / CLOCK_TICKS,
                   (cutime + cstime) / CLOCK_TICKS)


def read_stat(pid: int, proc: Path = PROC) -> ProcCpu | None:
    """The process's CPU figures, or None when it no longer exists."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def read_cmdline(pid: int, proc: Path = PROC) -> str:
    """The process's command line, arguments joined by spaces (empty when it is gone)."""
    try:
        return (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_processes(proc: Path = PROC) -> list[ProcCpu]:
    """Every process that could be read (processes vanish while the directory is listed)."""
    found = (read_stat(int(entry.name), proc) for entry in proc.iterdir() if entry.name.isdigit())
    return [stat for stat in found if stat is not None]


def sample_tree(root: int, proc: Path = PROC) -> dict[int, ProcCpu]:
    """``root`` and all its descendants, by pid (empty when ``root`` is gone)."""
    processes = all_processes(proc)
    children: dict[int, list[ProcCpu]] = {}
    for stat in processes:
        children.setdefault(stat.ppid, []).append(stat)
    tree = {stat.pid: stat for stat in processes if stat.pid == root}
    frontier = list(tree)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child.pid not in tree:
                tree[child.pid] = child
                frontier.append(child.pid)
    return tree


def cpu_delta(before: Mapping[int, ProcCpu], after: Mapping[int, ProcCpu],
              group: Callable[[ProcCpu], str]) -> dict[str, float]:
    """CPU seconds used between two samples, summed per ``group(process)``.

    Each process's own CPU goes to its group; CPU of children that exited in
    between, which the kernel adds to their parent's ``cutime``/``cstime``
    when it reaps them, goes to ``"exited (reaped by <parent's group>)"``,
    less what those that were already running at ``before`` had used by then.
    A process that exited and was not reaped by a process in the tree is not
    counted.
    """
    totals: dict[str, float] = {}

    def add(name: str, seconds: float) -> None:
        totals[name] = totals.get(name, 0.0) + seconds

    for pid, now in after.items():
        then = before.get(pid)
        if then is not None and then.comm != now.comm and then.ppid != now.ppid:
            then = None  # the pid was reused
        add(group(now), now.own - (then.own if then else 0.0))
        if (reaped := now.reaped - (then.reaped if then else 0.0)) > 0:
            add(f"exited (reaped by {group(now)})", reaped)
    for pid, then in before.items():
        parent = after.get(then.ppid)
        if pid not in after and parent is not None and f"exited (reaped by {group(parent)})" in totals:
            add(f"exited (reaped by {group(parent)})", -(then.own + then.reaped))
    return totals


# --------------------------------------------------------------------------- strace -c


@dataclass(frozen=True)
class SyscallCount:
    """One line of ``strace -c``: calls, failed calls, and strace's own time estimate."""

    calls: int
    errors: int
    seconds: float


_SUMMARY_LINE = re.compile(
    r"^\s*(?P<percent>[\d.]+)\s+(?P<seconds>[\d.]+)\s+(?P<usecs>\d+)\s+(?P<calls>\d+)\s+"
    r"(?:(?P<errors>\d+)\s+)?(?P<name>\w+)\s*$"
)


def parse_strace_summary(text: str) -> dict[str, SyscallCount]:
    """The per-syscall lines of an ``strace -c`` table (the ``total`` line left out).

    Several tables (``strace -c`` with more than one personality) are added
    together.  Raise ValueError when the text holds no table at all.
    """
    counts: dict[str, SyscallCount] = {}
    seen_table = False
    for line in text.splitlines():
        if line.lstrip().startswith("% time"):
            seen_table = True
            continue
        match = _SUMMARY_LINE.match(line)
        if not match or match["name"] == "total":
            continue
        old = counts.get(match["name"], SyscallCount(0, 0, 0.0))
        counts[match["name"]] = SyscallCount(old.calls + int(match["calls"]),
                                             old.errors + int(match["errors"] or 0),
                                             old.seconds + float(match["seconds"]))
    if not seen_table:
        raise ValueError(f"no strace -c table in: {text[:200]!r}")
    return counts


def top_calls(counts: Mapping[str, SyscallCount], n: int = 10) -> list[tuple[str, int]]:
    """The ``n`` most frequent system calls, most frequent first (ties by name)."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1].calls, item[0]))
    return [(name, count.calls) for name, count in ranked[:n]]


_ATTACHED = re.compile(r"Process (\d+) attached")


class StraceCounter:
    """``strace -c -f`` attached to running processes until :meth:`stop`.

    ``start(pids)`` returns once strace has attached to every one of them (it
    says so on stderr), so nothing the caller does afterwards is missed.
    """

    def __init__(self, strace: str = "strace") -> None:
        self.strace = strace
        self.proc: subprocess.Popen[str] | None = None
        self.output: Path | None = None
        self._attached: set[int] = set()
        self._want: set[int] = set()
        self._ready = threading.Event()
        self._stderr: list[str] = []

    def start(self, pids: Iterable[int]) -> None:
        """Attach to ``pids`` (all their threads, and children forked from now on); raise StraceError."""
        self._want = set(pids)
        if not self._want:
            raise StraceError("no process to attach to")
        fd, name = tempfile.mkstemp(prefix="smtpbench-strace-", suffix=".txt")
        os.close(fd)
        self.output = Path(name)
        argv = [self.strace, "-c", "-f", "-o", name, *(f"-p{pid}" for pid in sorted(self._want))]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            self._cleanup()
            raise StraceError(f"{self.strace}: {exc}") from None
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(STRACE_ATTACH_TIMEOUT) or self.proc.poll() is not None:
            detail = " ".join(self._stderr)[-400:]
            self.stop_quietly()
            raise StraceError(f"strace did not attach to {sorted(self._want)}: {detail}")

    def _read_stderr(self) -> None:
        """Collect strace's messages; note each attached pid, and signal once all requested ones are."""
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.strip())
            if match := _ATTACHED.search(line):
                self._attached.add(int(match[1]))
                if self._want <= self._attached:
                    self._ready.set()
        self._ready.set()  # strace exited: start() then sees poll() is not None

    def stop(self) -> dict[str, SyscallCount]:
        """Interrupt strace (it detaches and writes its table) and return the counts; raise StraceError."""
        if self.proc is None or self.output is None:
            raise StraceError("strace is not running")
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STRACE_STOP_TIMEOUT)
            return parse_strace_summary(self.output.read_text())
        except (subprocess.TimeoutExpired, OSError, ValueError) as exc:
            raise StraceError(f"strace summary: {exc}") from None
        finally:
            self.stop_quietly()

    def stop_quietly(self) -> None:
        """Make sure strace is gone and its output file removed (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5.0)
        self.proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self.output is not None:
            self.output.unlink(missing_ok=True)
            self.output = None


# --------------------------------------------------------------------------- around the measured phase


@dataclass
class TreeFigures:
    """What :class:`TreeMeter` saw between ``start`` and ``stop``."""

    cpu: dict[str, float]
    """CPU seconds per process group (see :func:`cpu_delta`)."""
    processes: dict[str, int]
    """Processes per group alive at the end."""
    syscalls: dict[str, SyscallCount] | None = None
    """``strace -c -f`` counts over the whole tree, when traced."""


class TreeMeter:
    """CPU of a process tree, and optionally its system calls, between ``start()`` and ``stop()``.

    ``group`` names the group a process belongs to (e.g. ``"main"`` or
    ``"workers"``), so figures are reported per group.
    """

    def __init__(self, root: int, group: Callable[[ProcCpu], str], strace: bool = False) -> None:
        self.root = root
        self.group = group
        self.strace = StraceCounter() if strace else None
        self.before: dict[int, ProcCpu] = {}

    def start(self) -> None:
        """Sample the tree's CPU, then attach strace to every process in it; raise StraceError."""
        self.before = sample_tree(self.root)
        if not self.before:
            raise StraceError(f"process {self.root} is gone")
        if self.strace is not None:
            self.strace.start(self.before)
            self.before = sample_tree(self.root)  # attaching took a moment: count from here

    def stop(self) -> TreeFigures:
        """Detach strace (if any) and return the CPU used per group since :meth:`start`; raise StraceError."""
        syscalls = self.strace.stop() if self.strace is not None else None
        after = sample_tree(self.root)
        processes: dict[str, int] = {}
        for stat in after.values():
            processes[self.group(stat)] = processes.get(self.group(stat), 0) + 1
        return TreeFigures(cpu_delta(self.before, after, self.group), processes, syscalls)

    def close(self) -> None:
        """Make sure no strace is left attached (safe in ``finally`` blocks)."""
        if self.strace is not None:
            self.strace.stop_quietly()
