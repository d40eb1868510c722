"""A server's own figures for the measured phase: its deliveries, its CPU per process group, its system calls.

The phase starts once the warm-up's messages have all been delivered (so
their delivery is not charged to the measured messages) and ends once every
accepted message has reached the server's Maildir (so the delivery work of
the measured messages is).  A server without a Maildir (``maildir=None``)
is sampled from just before the first measured message to just after the
last ``250``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from _maildir import wait_for_messages
from _procstat import ProcCpu, StraceError, TreeMeter, read_cmdline
from _report import Row

DRAIN_TIMEOUT = 120.0
"""Seconds after the last 250 by which every accepted message must be in the Maildir."""


def gateway_group(root: int) -> Callable[[ProcCpu], str]:
    """Groups of the gateway's tree: ``main`` (SMTP supervisor, runner), ``workers`` (SMTP), ``helpers``.

    Helpers are the workers' fork server (``sesmail-forks``) or, where workers
    are spawned, multiprocessing's resource tracker; they use next to no CPU.
    """
    def group(process: ProcCpu) -> str:
        if process.pid == root:
            return "main"
        helper = process.comm == "sesmail-forks" or "resource_tracker" in read_cmdline(process.pid)
        return "helpers" if helper else "workers"
    return group


class PhaseMeter:
    """Fills a :class:`Row`'s ``delivered``, ``cpu``, ``processes`` and ``syscalls`` around the measured phase."""

    def __init__(self, root: int, group: Callable[[ProcCpu], str], maildir: Path | None = None,
                 strace: bool = False) -> None:
        self.tree = TreeMeter(root, group, strace)
        self.maildir = maildir

    async def begin(self, row: Row) -> None:
        """Wait for the warm-up's deliveries, then sample CPU (and attach strace); a failure fails the row."""
        if self.maildir is not None:
            await wait_for_messages(self.maildir, row.warmup_accepted, DRAIN_TIMEOUT)
        try:
            await asyncio.to_thread(self.tree.start)
        except StraceError as exc:
            row.failure = str(exc)

    async def end(self, row: Row) -> None:
        """Wait until the Maildir holds every accepted message (or fail the row), then take the figures."""
        if self.maildir is not None:
            expected = row.total_accepted
            row.delivered = drained = await wait_for_messages(self.maildir, expected, DRAIN_TIMEOUT)
            if drained.count < expected:
                row.failure = row.failure or (f"only {drained.count} of {expected} accepted messages reached the Maildir "
                               f"{drained.seconds:.0f} s after the last 250")
        try:
            figures = await asyncio.to_thread(self.tree.stop)
        except StraceError as exc:
            row.failure = row.failure or str(exc)
            return
        row.cpu, row.processes, row.syscalls = figures.cpu, figures.processes, figures.syscalls

    def close(self) -> None:
        """Detach strace if it is still attached (safe in ``finally`` blocks)."""
        self.tree.close()
