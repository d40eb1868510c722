"""Memory of a process tree, read from ``/proc`` (Linux only).

PSS (proportional set size) is the figure that adds up: a page shared by
N processes counts 1/N in each, so the sum over a tree is what the tree
costs the machine. RSS counts shared pages once per process (it
over-counts a forked tree); USS (private pages only) is what killing that
one process would give back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Memory:
    """One process's (or a tree's) memory in KiB."""

    pss: int = 0
    rss: int = 0
    uss: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.pss + other.pss, self.rss + other.rss, self.uss + other.uss)

    @property
    def pss_mb(self) -> float:
        """PSS in MB (10^6 bytes), the unit the figures are quoted in."""
        return self.pss * 1024 / 1e6


def process_memory(pid: int) -> Memory:
    """Pss, Rss and USS (Private_Clean + Private_Dirty) of one process; zero if it is gone."""
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                fields[name] = int(value[0])
    return Memory(fields.get("Pss", 0), fields.get("Rss", 0),
                  fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before children."""
    tree, index = [pid], 0
    while index < len(tree):
        with contextlib.suppress(OSError):
            for task in (PROC / str(tree[index]) / "task").iterdir():
                children = (task / "children").read_text().split()
                tree.extend(int(child) for child in children)
        index += 1
    return tree


def tree_memory(pid: int) -> dict[int, Memory]:
    """Each process of the tree under ``pid`` (itself included) with its memory."""
    return {member: process_memory(member) for member in descendants(pid)}


def total(tree: dict[int, Memory]) -> Memory:
    """The sum over a tree."""
    return sum(tree.values(), Memory())


def command_name(pid: int) -> str:
    """A short name of a process: its title (``comm``), for per-process figures."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


class PeakSampler:
    """Samples a tree's total PSS in the background and keeps the peak.

    Use as ``async with PeakSampler(pid) as peak: ...`` and read
    ``peak.peak`` (a :class:`Memory`) afterwards.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = Memory()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            now = total(await asyncio.to_thread(tree_memory, self.pid))
            if now.pss > self.peak.pss:
                self.peak = now
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> PeakSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # One last sample: the tree as the load left it.
        now = total(await asyncio.to_thread(tree_memory, self.pid))
        if now.pss > self.peak.pss:
            self.peak = now
