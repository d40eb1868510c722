"""Memory of the gateway's process tree: PSS at idle and the peak under a 4 KiB load.

Starts ``sesmail_gateway serve`` (fresh data dir, the accept benchmark's
config: durable spool, Maildir catch-all, folder archive, checks through a
DNS stub) with ``--workers`` SMTP workers, reads the PSS of the daemon and
every process below it from ``/proc/<pid>/smaps_rollup`` once it is idle,
then sends DKIM-signed 4 KiB mail (SPF, DKIM and DMARC all run and pass)
and samples the tree during the run. Prints per-process and total figures.
Run::

    .venv/bin/python benchmarks/memory.py [--workers 2] [--messages 3000] [--connections 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from _memory import Memory, TreeSampler, command_name, total, tree_memory
from _smtpload import run_load
from smtp_accept import GatewayTarget, prepare_workload, progress

IDLE_SETTLE = 3.0
"""Seconds after the first 220 before the idle reading: start-up's garbage and recovery are done by then."""


def table(title: str, tree: dict[int, Memory]) -> list[str]:
    """Per process and total, in MiB."""
    lines = [f"{title}:", f"  {'pid':>7}  {'process':<16} {'PSS MiB':>8} {'RSS MiB':>8} {'USS MiB':>8}"]
    for name, mem in [*((f"{pid:>7}  {command_name(pid):<16}", mem) for pid, mem in tree.items()),
                      (f"{'':>7}  {'total':<16}", total(tree))]:
        lines.append(f"  {name} {mem.pss / 1024:8.1f} {mem.rss / 1024:8.1f} "
                     f"{mem.uss / 1024:8.1f}")
    return lines


async def measure(args: argparse.Namespace) -> dict[str, object]:
    workload = await prepare_workload([args.size])
    target = GatewayTarget(workload.dns_server, args.workers, signed=True)
    try:
        await target.start()
        assert target.proc is not None
        pid = target.proc.pid
        await asyncio.sleep(IDLE_SETTLE)
        idle = await asyncio.to_thread(tree_memory, pid)
        progress(f"idle: {total(idle).pss_mib:.1f} MiB PSS over {len(idle)} processes; "
                 f"sending {args.messages} messages")
        sampler = TreeSampler(pid)
        sampler.start()
        result = await run_load(target.address, workload.message(args.size, True), args.connections, args.messages)
        loaded = await asyncio.to_thread(tree_memory, pid)
        figures = await sampler.stop()
        assert figures is not None
        print("\n".join(table("idle", idle) + table("end of load", loaded)))
        print(f"peak under load: {figures['peak_pss_mib']:.1f} MiB PSS (total); "
              f"{result.accepted} accepted, {result.error_count} errors, {result.rate:.0f} msg/s")
        return {"workers": args.workers, "idle_pss_mib": round(total(idle).pss_mib, 1), **figures,
                "idle": {f"{command_name(p)}:{p}": round(m.pss_mib, 1) for p, m in idle.items()},
                "end_of_load": {f"{command_name(p)}:{p}": round(m.pss_mib, 1) for p, m in loaded.items()},
                "accepted": result.accepted, "errors": result.error_count}
    finally:
        target.stop()
        workload.dns.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2, help="smtp.workers (default 2)")
    parser.add_argument("--messages", type=int, default=3000, help="messages in the load (default 3000)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent connections (default 20)")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON (KiB)")
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0 if not figures["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
