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
    def pss_mib(self) -> float:
        """PSS in MiB, the unit the figures are quoted in."""
        return self.pss / 1024


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


class TreeSampler:
    """PSS of a process tree: once at construction (idle), then the peak while sampling.

    ``TreeSampler(pid)`` reads the idle figure; ``start()`` samples in the
    background every ``interval`` seconds; ``await stop()`` returns the
    figures in MiB. With ``pid`` None it does nothing and returns None, so a
    caller need not tell the targets it measures from those it does not.
    """

    def __init__(self, pid: int | None, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.idle = total(tree_memory(pid)) if pid else Memory()
        self.peak = Memory()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.pid:
            self._task = asyncio.create_task(self._run())

    async def _sample(self) -> None:
        assert self.pid
        now = total(await asyncio.to_thread(tree_memory, self.pid))
        if now.pss > self.peak.pss:
            self.peak = now

    async def _run(self) -> None:
        while True:
            await self._sample()
            await asyncio.sleep(self.interval)

    async def stop(self) -> dict[str, float] | None:
        """``{"idle_pss_mib": ..., "peak_pss_mib": ...}``, or None without a pid."""
        if self._task is None:
            return None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._sample()  # the tree as the load left it
        return {"idle_pss_mib": round(self.idle.pss_mib, 1), "peak_pss_mib": round(self.peak.pss_mib, 1)}
