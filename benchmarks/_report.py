"""Results of the accept benchmark: rows, the text table, ratios, auth verdicts, server figures, and JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from _maildir import Drained
from _procstat import DURABILITY_CALLS, SyscallCount, top_calls
from _smtpload import Result

AUTH_METHODS = ("dkim", "spf", "dmarc")
"""The verdicts the checks mode must see pass (ARC is reported when present)."""

RATIO_PAIRS = (
    ("checks cost", "gateway+checks", "gateway"),
    ("checks vs postfix", "gateway+checks", "postfix"),
    ("checks vs postfix+maildir", "gateway+checks", "postfix+maildir"),
    ("checks vs bare", "gateway+checks", "bare"),
    ("gateway vs bare", "gateway", "bare"),
    ("checks alone vs bare (the limit the checks set)", "bare+checks", "bare"),
    ("checks vs checks alone", "gateway+checks", "bare+checks"),
    ("the floor vs bare (the least durable work of the local default)", "bare+durable", "bare"),
    ("checks vs the floor", "gateway+checks", "bare+durable"),
)
"""(title, numerator target, denominator target) -- printed when both rows exist."""

RATE_TARGETS = (
    ("gateway+checks", "bare", 4096, 0.75),
    ("gateway+checks", "postfix+maildir", 4096, 1.0),
    ("gateway+checks", "postfix+maildir", 102400, 1.0),
)
"""(numerator, denominator, size, least msg/s ratio): the accept-rate targets of the performance work."""
P99_TARGETS = (("gateway+checks", 4096, 50.0),)
"""(target, size, most p99 ms): the latency target of the performance work."""

AuthCounts = dict[str, dict[str, int]]
"""method -> result -> count, as scraped from ``sesmail_auth_results_total``."""


@dataclass
class Commits:
    """Journal group commits: how many, messages per commit, and how long one took (append + fdatasync)."""

    count: int
    messages: int
    seconds: float
    slower_than: dict[float, int]
    """Commits that took longer than each bucket bound (seconds)."""

    def line(self) -> str:
        if not self.count:
            return "no commits"
        tail = ", ".join(f"> {bound * 1000:g} ms {n / self.count:.1%}" for bound, n in sorted(self.slower_than.items()))
        return (f"{self.count} commits, {self.messages / self.count:.1f} messages each, "
                f"mean {self.seconds / self.count * 1000:.2f} ms; {tail}")


@dataclass
class Row:
    """One line of the results table."""

    target: str
    size: int
    result: Result | None = None
    failure: str = ""
    skipped: str = ""
    warmup_accepted: int = 0
    warmup_errors: dict[str, int] = field(default_factory=dict)
    auth: AuthCounts | None = None
    """Authentication verdicts the gateway recorded (warm-up included); None for other targets."""
    dns_queries: int | None = None
    """Queries the DNS stub answered during the measured phase (warm cache: few); None if not tracked."""
    delivered: Drained | None = None
    """Messages in the server's Maildir when the phase ended, and how long after the last 250."""
    cpu: dict[str, float] | None = None
    """CPU seconds of the server's processes in the measured phase, per process group."""
    processes: dict[str, int] | None = None
    """The server's processes per group at the end of the phase."""
    syscalls: dict[str, SyscallCount] | None = None
    """``strace -c -f`` counts over the server's processes in the measured phase (``--strace``)."""
    memory: dict[str, float] | None = None
    """The gateway's process tree, PSS in MiB: idle after start, and the peak while measuring; None if not read."""
    commits: Commits | None = None
    """The gateway's journal group commits over the run (warm-up included), from its /metrics."""
    client_cpu: float | None = None
    """CPU seconds of the load client (the benchmark's event loop thread) over the measured phase."""

    @property
    def total_accepted(self) -> int:
        """Messages the server accepted in warm-up and measurement together."""
        return self.warmup_accepted + (self.result.accepted if self.result else 0)

    def as_json(self) -> dict[str, Any]:
        """Machine-readable form (NaN latencies become null)."""
        res = self.result
        out: dict[str, Any] = {"target": self.target, "size": self.size, "failure": self.failure or None,
                               "skipped": self.skipped or None}
        if res is not None:
            out.update(
                attempted=res.attempted, accepted=res.accepted, errors=dict(res.errors),
                error_count=res.error_count, seconds=round(res.seconds, 3),
                msg_per_s=round(res.rate, 1), p50_ms=_finite(res.percentile_ms(50)),
                p99_ms=_finite(res.percentile_ms(99)), warmup_accepted=self.warmup_accepted,
                warmup_errors=self.warmup_errors,
            )
        if self.auth is not None:
            out["auth_results"] = self.auth
        if self.dns_queries is not None:
            out["dns_queries"] = self.dns_queries
        if self.delivered is not None:
            out["maildir"] = {"messages": self.delivered.count, "seconds_after_last_250": round(self.delivered.seconds, 2)}
        if self.cpu is not None and (per := self.per_message(self.cpu, 1000.0)):
            out["cpu_ms_per_message"] = {group: round(ms, 4) for group, ms in per.items()}
            out["processes"] = self.processes
        if self.syscalls is not None and (per := self.per_message({k: v.calls for k, v in self.syscalls.items()})):
            out["syscalls_per_message"] = {name: round(n, 3) for name, n in sorted(per.items(), key=lambda i: -i[1])}
        if self.memory is not None:
            out["memory"] = self.memory
        if self.client_cpu is not None and res is not None and res.accepted:
            out["client_cpu_ms_per_message"] = round(self.client_cpu * 1000.0 / res.accepted, 4)
        return out

    def per_message(self, totals: Mapping[str, float], scale: float = 1.0) -> dict[str, float]:
        """``totals`` times ``scale`` divided by the measured accepted messages; empty when none was accepted."""
        accepted = self.result.accepted if self.result else 0
        return {key: value * scale / accepted for key, value in totals.items()} if accepted else {}


def _finite(value: float) -> float | None:
    """Round a latency for JSON, mapping NaN to None."""
    return None if math.isnan(value) else round(value, 2)


def size_label(size: int) -> str:
    """Render a byte count the way people read it: ``4 KiB``, ``100 KiB``, ``1.5 MiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
    return f"{size} B"


# --------------------------------------------------------------------------- table


def _cells(row: Row) -> tuple[str, ...]:
    """The table cells of one row (the last cell carries FAILED/skipped text when there is no result)."""
    res = row.result
    if res is None:
        note = "skipped (see below)" if row.skipped else f"FAILED: {row.failure}"
        return (row.target, size_label(row.size), "-", "-", "-", "-", "-", note)
    last = f"{res.percentile_ms(99):.2f}" + (f"  FAILED: {row.failure}" if row.failure else "")
    return (row.target, size_label(row.size), str(res.accepted), str(res.error_count), f"{res.seconds:.2f}",
            f"{res.rate:.1f}", f"{res.percentile_ms(50):.2f}", last)


def format_table(rows: Sequence[Row]) -> str:
    """Render the results as an aligned text table."""
    header = ("target", "size", "messages", "errors", "seconds", "msg/s", "p50 ms", "p99 ms")
    lines = [header, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines if "FAILED" not in line[i] and "skipped" not in line[i])
              for i in range(len(header))]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) if i < 2 or "FAILED" in cell or "skipped" in cell else cell.rjust(widths[i])
                 for i, cell in enumerate(line)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


# --------------------------------------------------------------------------- ratios


def ratios(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Throughput and latency ratios for every :data:`RATIO_PAIRS` pair measured at the same size."""
    by_key = {(row.target, row.size): row.result for row in rows if row.result is not None and not row.failure}
    out = []
    for title, top, bottom in RATIO_PAIRS:
        for size in sorted({row.size for row in rows}):
            num, den = by_key.get((top, size)), by_key.get((bottom, size))
            if num is None or den is None or not num.accepted or not den.accepted:
                continue
            out.append({
                "name": title, "numerator": top, "denominator": bottom, "size": size,
                "msg_per_s": round(num.rate / den.rate, 3),
                "p50": round(num.percentile_ms(50) / den.percentile_ms(50), 2),
                "p99": round(num.percentile_ms(99) / den.percentile_ms(99), 2),
            })
    return out


def format_ratios(ratio_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ratio lines, grouped by pair; the checks cost also as a percentage of the gateway's own rate."""
    lines: list[str] = []
    current = ""
    for r in ratio_rows:
        if r["name"] != current:
            current = r["name"]
            lines.append(f"{current} ({r['numerator']} / {r['denominator']}):")
        extra = ""
        if r["name"] == "checks cost":
            extra = f"   (checks cost {max(0.0, 1 - r['msg_per_s']) * 100:.0f} % of the rate)"
        lines.append(f"  {size_label(r['size']):>8}: msg/s x{r['msg_per_s']:.3f}   p50 x{r['p50']:.2f}   "
                     f"p99 x{r['p99']:.2f}{extra}")
    return lines


# --------------------------------------------------------------------------- auth verdicts


def auth_summary(row: Row) -> str:
    """One line: how many messages got each verdict, pass counts first."""
    assert row.auth is not None
    parts = []
    for method in (*AUTH_METHODS, *sorted(set(row.auth) - set(AUTH_METHODS))):
        results = row.auth.get(method, {})
        ordered = sorted(results.items(), key=lambda item: (item[0] != "pass", item[0]))
        parts.append(", ".join(f"{method}={result} {count}" for result, count in ordered) or f"{method}: -")
    dns = "" if row.dns_queries is None else f"; {row.dns_queries} DNS queries while measuring"
    return f"{row.target} {size_label(row.size)}: {row.total_accepted} accepted; " + "; ".join(parts) + dns


def all_verdicts_in(auth: AuthCounts, expected: int) -> bool:
    """True when dkim, spf and dmarc each have at least ``expected`` verdicts of any result."""
    return all(sum(auth.get(method, {}).values()) >= expected for method in AUTH_METHODS)


def missing_passes(auth: AuthCounts, expected: int) -> str:
    """Empty if dkim, spf and dmarc each passed at least ``expected`` times; else what fell short."""
    short = [f"{method}=pass {auth.get(method, {}).get('pass', 0)}/{expected}" for method in AUTH_METHODS
             if auth.get(method, {}).get("pass", 0) < expected]
    return ", ".join(short)


# --------------------------------------------------------------------------- report


def format_report(rows: Sequence[Row], connections: int, legend: Mapping[str, str]) -> str:
    """The full human-readable report: legend, table, ratios, auth verdicts, and every error kind seen."""
    parts = [f"SMTP accept benchmark -- {connections} connections, latency = MAIL FROM .. final 250", ""]
    present = list(dict.fromkeys(row.target for row in rows))
    parts += [f"  {name:<15} {legend.get(name, '')}".rstrip() for name in present]
    parts += ["", format_table(rows)]
    if ratio_rows := ratios(rows):
        parts += ["", *format_ratios(ratio_rows)]
    parts += format_targets(rows)
    if auth_rows := [row for row in rows if row.auth is not None]:
        parts += ["", "authentication verdicts from the gateway's /metrics (sesmail_auth_results_total, "
                      "warm-up included):"]
        parts += [f"  {auth_summary(row)}" for row in auth_rows]
    parts += format_server_figures(rows)
    if memory_rows := [row for row in rows if row.memory is not None]:
        parts += ["", "memory of the gateway's process tree (PSS from /proc/*/smaps_rollup, daemon and every process "
                      "below it):"]
        parts += [f"  {row.target} {size_label(row.size)}: {row.memory['idle_pss_mib']:.1f} MiB idle, "
                  f"{row.memory['peak_pss_mib']:.1f} MiB peak under load" for row in memory_rows]
    skipped = list(dict.fromkeys(f"{row.target} skipped: {row.skipped}" for row in rows if row.skipped))
    if skipped:
        parts += ["", *skipped]
    errors = [(row, kind, n) for row in rows if row.result for kind, n in sorted(row.result.errors.items())]
    warm = [(row, kind, n) for row in rows for kind, n in sorted(row.warmup_errors.items())]
    if errors or warm:
        parts += ["", "errors (non-250 replies and connection failures):"]
        parts += [f"  {row.target} {size_label(row.size)}: {kind} x{n}" for row, kind, n in errors]
        parts += [f"  {row.target} {size_label(row.size)} (warm-up): {kind} x{n}" for row, kind, n in warm]
    return "\n".join(parts)


# --------------------------------------------------------------------------- server figures


def format_server_figures(rows: Sequence[Row]) -> list[str]:
    """Maildir deliveries, CPU per message per process group, and system calls per message, when measured."""
    parts: list[str] = []
    if delivered := [row for row in rows if row.delivered is not None]:
        parts += ["", "Maildir after the measured phase (every accepted message, warm-up included, must be there):"]
        parts += [f"  {row.target} {size_label(row.size)}: {row.delivered.count}/{row.total_accepted} messages, "
                  f"complete {row.delivered.seconds:.1f} s after the last 250" for row in delivered if row.delivered]
    if cpu_rows := [row for row in rows if row.cpu is not None and row.result and row.result.accepted]:
        parts += ["", "CPU ms per accepted message (utime+stime from /proc/<pid>/stat of the server's process "
                      "tree, measured phase until its Maildir was complete):"]
        parts += [f"  {row.target} {size_label(row.size)}: {cpu_line(row)}" for row in cpu_rows]
    if client_rows := [row for row in rows if row.client_cpu is not None and row.result and row.result.accepted]:
        parts += ["", "CPU ms per accepted message of the load client (the benchmark's own event loop, "
                      "on the same cores as the server):"]
        parts += [f"  {row.target} {size_label(row.size)}: {row.client_cpu * 1000.0 / row.result.accepted:.3f}"
                  for row in client_rows if row.client_cpu is not None and row.result]
    if commit_rows := [row for row in rows if row.commits is not None]:
        parts += ["", "journal group commits (each session waits for one before its 250):"]
        parts += [f"  {row.target} {size_label(row.size)}: {row.commits.line()}" for row in commit_rows
                  if row.commits is not None]
    if sys_rows := [row for row in rows if row.syscalls is not None and row.result and row.result.accepted]:
        parts += ["", "system calls per accepted message (strace -c -f attached to every process of the server "
                      "for the measured phase; ptrace slows every call, so these rows' rate and CPU are not "
                      "comparable with an untraced run):"]
        for row in sys_rows:
            parts += [f"  {row.target} {size_label(row.size)}:", *(f"    {line}" for line in syscall_lines(row))]
    return parts


def cpu_line(row: Row) -> str:
    """``main 0.41, workers 1.20 (2 processes), total 1.61`` -- the largest group first."""
    assert row.cpu is not None
    per = row.per_message(row.cpu, 1000.0)
    processes = row.processes or {}
    cells = []
    for group, ms in sorted(per.items(), key=lambda item: -item[1]):
        count = processes.get(group, 0)
        note = f" ({count} processes)" if count > 1 else ""
        cells.append(f"{group} {ms:.3f}{note}")
    return ", ".join(cells) + f"; total {sum(per.values()):.3f}"


def syscall_lines(row: Row) -> list[str]:
    """The total per message, the ten most frequent calls, and the durability calls, per message."""
    assert row.syscalls is not None and row.result is not None
    accepted = row.result.accepted
    total = sum(count.calls for count in row.syscalls.values())
    top = ", ".join(f"{name} {calls / accepted:.1f}" for name, calls in top_calls(row.syscalls, 10))
    durable = ", ".join(f"{name} {row.syscalls[name].calls / accepted:.2f}" for name in DURABILITY_CALLS
                        if name in row.syscalls)
    return [f"total {total / accepted:.1f}", f"top 10: {top}", f"durability: {durable or 'none'}"]


def format_targets(rows: Sequence[Row]) -> list[str]:
    """Each performance target that this run measured, with the figure and whether it is met."""
    by_key = {(row.target, row.size): row.result for row in rows if row.result is not None and not row.failure}
    lines = []
    for top, bottom, size, least in RATE_TARGETS:
        num, den = by_key.get((top, size)), by_key.get((bottom, size))
        if num is not None and den is not None and den.rate > 0:
            ratio = num.rate / den.rate
            lines.append(f"  {top} / {bottom} msg/s at {size_label(size)} >= {least:.2f}: {ratio:.3f}"
                         f"{'' if ratio >= least else '  NOT MET'}")
    for target, size, most in P99_TARGETS:
        if (res := by_key.get((target, size))) is not None and res.accepted:
            p99 = res.percentile_ms(99)
            lines.append(f"  {target} p99 at {size_label(size)} <= {most:.0f} ms: {p99:.2f} ms"
                         f"{'' if p99 <= most else '  NOT MET'}")
    return ["", "performance targets:", *lines] if lines else []
