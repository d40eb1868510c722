"""``sesmail-gateway outbound status``: the SES morning health check in one command.

Sections: sending quota and 24-hour usage; bounce and complaint rates
against the lines at which SES puts an account under review (5 % and
0.1 %), from the account's reputation metrics in CloudWatch when present,
else from the send statistics; the account's sending and enforcement
status; the suppression list (size and newest entries); and the state of
the outbound alarms. A section SES cannot answer is shown as unavailable
with the AWS error; the others still print. Exit status 1 when a rate is
over its line, the account is not healthy, or an outbound alarm fires.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sesmail_gateway import aws
from sesmail_gateway.cli.common import CliError, json_flag, load_config, print_json
from sesmail_gateway.cli.routes import Subparsers
from sesmail_gateway.config import AwsConfig

BOUNCE_LINE = 0.05
COMPLAINT_LINE = 0.001
NEWEST_SUPPRESSED = 5
Section = dict[str, Any]


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("outbound", parents=[common], help="SES outbound health",
                           description="SES outbound sending: quota, reputation, suppression list, alarms.")
    leaves = group.add_subparsers(dest="outbound_command", metavar="ACTION", required=True)
    status = leaves.add_parser("status", parents=[common], help="quota, rates, account, suppression list, alarms",
                               description="The SES health check: quota and usage, bounce and complaint rates "
                                           "against the 5 %% / 0.1 %% lines, account status, suppression list, "
                                           "outbound alarms.")
    json_flag(status)
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    report = gather(load_config(args).aws)
    sections = [report[key] for key in ("quota", "rates", "account", "suppression", "alarms")]
    if all("error" in section for section in sections):
        raise CliError(f"cannot reach SES: {report['quota']['error']}")
    if args.json:
        print_json(report)
    else:
        _print(report)
    return 0 if report["healthy"] else 1


def gather(config: AwsConfig, now: datetime | None = None) -> dict[str, Any]:
    """Every section, each either its figures or ``{"error": ...}``; and one overall verdict."""
    now = now or datetime.now(UTC)
    report = {
        "quota": _section(lambda: quota(config)),
        "rates": _section(lambda: rates(config, now)),
        "account": _section(lambda: account(config)),
        "suppression": _section(lambda: suppression(config)),
        "alarms": _section(lambda: alarms(config)),
    }
    problems = []
    for name in ("bounce", "complaint"):
        if report["rates"].get(name, {}).get("over_line"):
            problems.append(f"{name} rate over the SES review line")
    if report["account"].get("enforcement_status") not in (None, "HEALTHY"):
        problems.append(f"account enforcement status {report['account']['enforcement_status']}")
    if report["account"].get("sending_enabled") is False:
        problems.append("sending is disabled for the account")
    problems += [f"alarm {a['name']} is in ALARM" for a in report["alarms"].get("alarms", []) if a["state"] == "ALARM"]
    return {**report, "healthy": not problems, "problems": problems}


def quota(config: AwsConfig) -> Section:
    answer = aws.client(config, "ses").get_send_quota()
    limit, sent = float(answer["Max24HourSend"]), float(answer["SentLast24Hours"])
    return {"max_24h_send": limit, "max_send_rate": float(answer["MaxSendRate"]), "sent_last_24h": sent,
            "used_percent": round(100.0 * sent / limit, 2) if limit > 0 else None}


def rates(config: AwsConfig, now: datetime) -> Section:
    """Reputation rates from CloudWatch (AWS/SES) when SES publishes them, else from the send statistics."""
    cloudwatch = aws.client(config, "cloudwatch")
    found = {name: _latest(cloudwatch, f"Reputation.{metric}", now)
             for name, metric in (("bounce", "BounceRate"), ("complaint", "ComplaintRate"))}
    source = "cloudwatch AWS/SES reputation metrics"
    if any(value is None for value in found.values()):
        points = aws.client(config, "ses").get_send_statistics().get("SendDataPoints", [])
        attempts = sum(int(p.get("DeliveryAttempts", 0)) for p in points)
        counted = {"bounce": sum(int(p.get("Bounces", 0)) for p in points),
                   "complaint": sum(int(p.get("Complaints", 0)) for p in points)}
        for name, value in found.items():
            if value is None:
                found[name] = counted[name] / attempts if attempts else 0.0
        source = f"send statistics of the last 14 days ({attempts} delivery attempts)"
    lines = {"bounce": BOUNCE_LINE, "complaint": COMPLAINT_LINE}
    return {"source": source, **{name: {"rate": round(float(value or 0.0), 6), "line": lines[name],
                                        "over_line": float(value or 0.0) >= lines[name]}
                                 for name, value in found.items()}}


def account(config: AwsConfig) -> Section:
    answer = aws.client(config, "sesv2").get_account()
    return {"sending_enabled": bool(answer.get("SendingEnabled")),
            "enforcement_status": answer.get("EnforcementStatus", "unknown"),
            "production_access": bool(answer.get("ProductionAccessEnabled"))}


def suppression(config: AwsConfig) -> Section:
    client = aws.client(config, "sesv2")
    entries: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = client.list_suppressed_destinations(**({"NextToken": token} if token else {}))
        entries += page.get("SuppressedDestinationSummaries", [])
        token = page.get("NextToken")
        if not token:
            break
    entries.sort(key=lambda e: e.get("LastUpdateTime") or datetime.min.replace(tzinfo=UTC), reverse=True)
    return {"count": len(entries), "newest": [
        {"address": e.get("EmailAddress"), "reason": e.get("Reason"), "since": e.get("LastUpdateTime")}
        for e in entries[:NEWEST_SUPPRESSED]]}


def alarms(config: AwsConfig) -> Section:
    """Alarms on SES metrics (AWS/SES) or on the outbound metrics the outbound-metrics Lambda publishes."""
    found = []
    for page in aws.client(config, "cloudwatch").get_paginator("describe_alarms").paginate():
        for alarm in page.get("MetricAlarms", []):
            metric = str(alarm.get("MetricName", ""))
            if alarm.get("Namespace") == "AWS/SES" or metric.startswith(("Outbound", "Reputation.")):
                found.append({"name": alarm["AlarmName"], "state": alarm.get("StateValue"), "metric": metric,
                              "threshold": alarm.get("Threshold")})
    return {"alarms": sorted(found, key=lambda a: a["name"])}


def _latest(cloudwatch: Any, metric: str, now: datetime) -> float | None:
    answer = cloudwatch.get_metric_statistics(
        Namespace="AWS/SES", MetricName=metric, StartTime=now - timedelta(days=1), EndTime=now + timedelta(minutes=5),
        Period=3600, Statistics=["Maximum"])
    points = sorted(answer.get("Datapoints", []), key=lambda p: p["Timestamp"])
    return float(points[-1]["Maximum"]) if points else None


def _section(read: Callable[[], Section]) -> Section:
    try:
        return read()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return {"error": f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")}
    except BotoCoreError as exc:
        return {"error": str(exc)}


def _print(report: dict[str, Any]) -> None:
    def unavailable(name: str, section: Section) -> bool:
        if "error" in section:
            print(f"{name}: unavailable ({section['error']})")
        return "error" in section

    quota_, rates_, account_ = report["quota"], report["rates"], report["account"]
    if not unavailable("quota", quota_):
        print(f"quota:       {quota_['sent_last_24h']:.0f} of {quota_['max_24h_send']:.0f} sent in 24 h "
              f"({quota_['used_percent']} %), max {quota_['max_send_rate']:.0f}/s")
    if not unavailable("rates", rates_):
        for name in ("bounce", "complaint"):
            rate = rates_[name]
            verdict = "OVER THE SES REVIEW LINE" if rate["over_line"] else "ok"
            print(f"{name + ' rate:':13}{100 * rate['rate']:.3f} % (line {100 * rate['line']:g} %) {verdict}")
        print(f"             from {rates_['source']}")
    if not unavailable("account", account_):
        print(f"account:     sending {'enabled' if account_['sending_enabled'] else 'DISABLED'}, "
              f"enforcement {account_['enforcement_status']}, "
              f"{'production' if account_['production_access'] else 'sandbox'}")
    if not unavailable("suppression", report["suppression"]):
        print(f"suppressed:  {report['suppression']['count']} address(es)")
        for entry in report["suppression"]["newest"]:
            print(f"             {entry['address']}  {entry['reason']}  {entry['since']}")
    if not unavailable("alarms", report["alarms"]):
        listed = report["alarms"]["alarms"]
        print(f"alarms:      {len(listed)} outbound alarm(s)")
        for alarm in listed:
            print(f"             {alarm['state']:17} {alarm['name']} ({alarm['metric']})")
    print("healthy" if report["healthy"] else "PROBLEMS: " + "; ".join(report["problems"]))
