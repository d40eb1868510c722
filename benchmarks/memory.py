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

from _memory import Memory, PeakSampler, command_name, total, tree_memory
from _smtpload import run_load
from smtp_accept import GatewayTarget, prepare_workload, progress

IDLE_SETTLE = 3.0
"""Seconds after the first 220 before the idle reading: start-up's garbage and recovery are done by then."""


def table(title: str, tree: dict[int, Memory]) -> list[str]:
    lines = [f"{title}:", f"  {'pid':>7}  {'process':<16} {'PSS MB':>8} {'RSS MB':>8} {'USS MB':>8}"]
    for pid, mem in tree.items():
        lines.append(f"  {pid:>7}  {command_name(pid):<16} {mem.pss / 1000:8.1f} {mem.rss / 1000:8.1f} "
                     f"{mem.uss / 1000:8.1f}")
    whole = total(tree)
    lines.append(f"  {'':>7}  {'total':<16} {whole.pss / 1000:8.1f} {whole.rss / 1000:8.1f} {whole.uss / 1000:8.1f}")
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
        progress(f"idle: {total(idle).pss / 1000:.1f} MB PSS over {len(idle)} processes; "
                 f"sending {args.messages} messages")
        async with PeakSampler(pid) as sampler:
            result = await run_load(target.address, workload.message(args.size, True), args.connections,
                                    args.messages)
            loaded = await asyncio.to_thread(tree_memory, pid)
        print("\n".join(table("idle", idle) + table("end of load", loaded)))
        print(f"peak under load: {sampler.peak.pss / 1000:.1f} MB PSS (total); "
              f"{result.accepted} accepted, {result.error_count} errors, {result.rate:.0f} msg/s")
        return {"workers": args.workers, "idle_pss_kib": total(idle).pss, "peak_pss_kib": sampler.peak.pss,
                "idle": {f"{command_name(p)}:{p}": m.pss for p, m in idle.items()},
                "end_of_load": {f"{command_name(p)}:{p}": m.pss for p, m in loaded.items()},
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
