"""The accept benchmark's own instruments, against real processes and a real strace.

``benchmarks/_procstat.py`` reads CPU time from ``/proc/<pid>/stat`` and
system calls from ``strace -c -f``; ``benchmarks/_maildir.py`` counts
delivered messages; ``benchmarks/_report.py`` turns them into per-message
figures.  A wrong figure here would be a wrong figure in every benchmark
run, so each is checked against a process whose work the test controls.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from _maildir import count_messages  # noqa: E402
from _procstat import (  # noqa: E402
    StraceCounter,
    cpu_delta,
    parse_strace_summary,
    read_stat,
    sample_tree,
    top_calls,
)
from _report import Row, cpu_line, format_targets, syscall_lines  # noqa: E402
from _smtpload import Result  # noqa: E402

# A process the test drives line by line over stdin; it answers each command on stdout.
CHILD = r"""
import os, subprocess, sys, threading, time

def burn(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass

def getppid_calls(n):
    for _ in range(n):
        os.getppid()

print("ready", flush=True)
for line in sys.stdin:
    command, _, arg = line.strip().partition(" ")
    if command == "comm":
        with open("/proc/self/comm", "w") as comm:
            comm.write(arg)
    elif command == "child":
        sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        print(sleeper.pid, flush=True)
        continue
    elif command == "burn":
        burn(float(arg))
        pid = os.fork()
        if pid == 0:
            burn(float(arg))
            os._exit(0)
        os.waitpid(pid, 0)
    elif command == "prefork":  # a child that burns CPU now and exits only on "reap"
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(hold_w)
            burn(float(arg))
            os.write(ready_w, b"x")
            os.read(hold_r, 1)
            os._exit(0)
        os.read(ready_r, 1)
        held = (pid, hold_w)
    elif command == "reap":
        os.close(held[1])
        os.waitpid(held[0], 0)
    elif command == "syscalls":
        thread = threading.Thread(target=getppid_calls, args=(int(arg),))
        thread.start()
        getppid_calls(int(arg))
        thread.join()
        pid = os.fork()
        if pid == 0:
            getppid_calls(int(arg))
            os._exit(0)
        os.waitpid(pid, 0)
    print("done", flush=True)
"""


class Child:
    """The CHILD script as a running process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.ask_line() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.ask_line()

    def ask_line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # also ends the sleeper, whose stdin was our child's pipe
        self.proc.wait(10)


@pytest.fixture
def child() -> Iterator[Child]:
    process = Child()
    try:
        yield process
    finally:
        process.close()


def test_stat_reads_a_command_name_with_spaces_and_parentheses(child: Child) -> None:
    assert child.ask("comm x) (y z") == "done"
    stat = read_stat(child.pid)
    assert stat is not None
    assert (stat.pid, stat.comm) == (child.pid, "x) (y z")
    assert stat.ppid == os.getpid()


def test_a_tree_holds_the_process_and_its_descendants_only(child: Child) -> None:
    sleeper = int(child.ask("child"))
    assert set(sample_tree(child.pid)) == {child.pid, sleeper}
    assert set(sample_tree(sleeper)) == {sleeper}


def test_cpu_of_a_process_and_of_the_child_it_reaped_is_counted_between_two_samples(child: Child) -> None:
    before = sample_tree(child.pid)
    assert child.ask("burn 0.3") == "done"
    after = sample_tree(child.pid)
    used = cpu_delta(before, after, lambda process: "driver")
    # /proc counts in clock ticks (10 ms): allow two of them each way.
    assert 0.28 <= used["driver"] < 1.5
    assert 0.28 <= used["exited (reaped by driver)"] < 1.5


def test_cpu_a_child_used_before_the_first_sample_is_not_counted_when_it_exits(child: Child) -> None:
    assert child.ask("prefork 0.3") == "done"
    before = sample_tree(child.pid)
    assert child.ask("reap") == "done"
    used = cpu_delta(before, sample_tree(child.pid), lambda process: "driver")
    assert abs(used["exited (reaped by driver)"]) < 0.05


def test_strace_counts_every_thread_and_forked_child_of_an_attached_process(child: Child) -> None:
    counter = StraceCounter()
    counter.start([child.pid])
    try:
        assert child.ask("syscalls 500") == "done"
    finally:
        counts = counter.stop()
    # Two threads of the process and one child forked after attaching: 500 calls each.
    assert counts["getppid"].calls == 1500
    assert top_calls(counts, 1) == [("getppid", 1500)]


def test_strace_summary_lines_add_up_to_its_own_total_line(tmp_path: Path) -> None:
    output = tmp_path / "strace.txt"
    script = "import os\nfor name in ('a', 'b', 'c'):\n    os.path.exists(name)\n    open(os.devnull).close()"
    subprocess.run(["strace", "-c", "-f", "-o", str(output), sys.executable, "-c", script], check=True)
    text = output.read_text()
    total = next(line.split() for line in text.splitlines() if line.split()[-1:] == ["total"])
    counts = parse_strace_summary(text)
    assert sum(count.calls for count in counts.values()) == int(total[3])
    assert sum(count.errors for count in counts.values()) == (int(total[4]) if len(total) == 6 else 0)
    assert counts["newfstatat"].errors >= 3  # the three missing names
    with pytest.raises(ValueError):
        parse_strace_summary("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n")


def test_maildir_count_takes_new_and_cur_of_every_folder_but_not_tmp(tmp_path: Path) -> None:
    for folder, files in (("new", 3), ("cur", 2), ("tmp", 4), (".Junk/new", 1), (".Junk/tmp", 1)):
        (tmp_path / folder).mkdir(parents=True)
        for n in range(files):
            (tmp_path / folder / f"{n}.eml").write_bytes(b"x")
    assert count_messages(tmp_path) == 6
    assert count_messages(tmp_path / "absent") == 0


def test_report_divides_cpu_and_syscalls_by_the_measured_messages_only() -> None:
    row = Row("gateway", 4096, result=Result(attempted=100, accepted=100, seconds=1.0), warmup_accepted=50,
              cpu={"main": 0.05, "workers": 0.2}, processes={"main": 1, "workers": 2})
    assert cpu_line(row) == "workers 2.000 (2 processes), main 0.500; total 2.500"
    row.syscalls = parse_strace_summary(STRACE_SAMPLE)
    assert syscall_lines(row) == [
        "total 6.0",
        "top 10: write 3.0, futex 2.0, fsync 1.0",
        "durability: fsync 1.00",
    ]


def test_report_says_which_performance_targets_this_run_met() -> None:
    def row(target: str, size: int, rate: float, p99_ms: float) -> Row:
        return Row(target, size, result=Result(attempted=100, accepted=100, seconds=100 / rate,
                                               latencies=[p99_ms / 1000] * 100))

    rows = [row("bare", 4096, 1000.0, 5.0), row("gateway+checks", 4096, 800.0, 60.0),
            row("postfix+maildir", 4096, 1000.0, 5.0), row("gateway+checks", 102400, 300.0, 90.0),
            row("postfix+maildir", 102400, 200.0, 9.0)]
    assert format_targets(rows) == [
        "",
        "performance targets:",
        "  gateway+checks / bare msg/s at 4 KiB >= 0.75: 0.800",
        "  gateway+checks / postfix+maildir msg/s at 4 KiB >= 1.00: 0.800  NOT MET",
        "  gateway+checks / postfix+maildir msg/s at 100 KiB >= 1.00: 1.500",
        "  gateway+checks p99 at 4 KiB <= 50 ms: 60.00 ms  NOT MET",
    ]
    rows[2].failure = "only 10 of 100 accepted messages reached the Maildir"
    assert "postfix+maildir msg/s at 4 KiB" not in "\n".join(format_targets(rows))


STRACE_SAMPLE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.000600           2       300           write
 30.00    0.000300           1       200        40 futex
 10.00    0.000100           1       100           fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           1       600        40 total
"""
