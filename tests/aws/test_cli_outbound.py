"""`sesmail-gateway outbound status` against moto server (SES, SESv2, CloudWatch)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sesmail_gateway import aws
from sesmail_gateway.cli import main
from tests.aws.motoserver import Moto, cli
from tests.conftest import run_cli, write_config


def config_for(tmp_path: Path, moto: Moto) -> Path:
    return write_config(tmp_path / "gateway.toml", {
        "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(tmp_path / "data")},
        "aws": moto.aws_section,
    })


def test_quota_rates_over_the_line_and_alarms(tmp_path: Path, moto: Moto, unique: Callable[[str], str]) -> None:
    ses = moto.client("ses")
    ses.verify_email_identity(EmailAddress="out@example.test")
    before = ses.get_send_quota()["SentLast24Hours"]
    for index in range(3):
        ses.send_email(Source="out@example.test", Destination={"ToAddresses": [f"r{index}@elsewhere.test"]},
                       Message={"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "b"}}})
    cloudwatch = moto.client("cloudwatch")
    # What SES itself publishes: a bounce rate of 6 %, over the 5 % review line.
    cloudwatch.put_metric_data(Namespace="AWS/SES", MetricData=[
        {"MetricName": "Reputation.BounceRate", "Value": 0.06, "Timestamp": datetime.now(UTC)},
        {"MetricName": "Reputation.ComplaintRate", "Value": 0.0002, "Timestamp": datetime.now(UTC)}])
    alarm = unique("ses-bounce-rate")
    cloudwatch.put_metric_alarm(AlarmName=alarm, Namespace="AWS/SES", MetricName="Reputation.BounceRate",
                                Statistic="Maximum", Period=3600, EvaluationPeriods=1, Threshold=0.05,
                                ComparisonOperator="GreaterThanOrEqualToThreshold")
    cloudwatch.put_metric_alarm(AlarmName=unique("unrelated"), Namespace="Other", MetricName="CPU",
                                Statistic="Maximum", Period=60, EvaluationPeriods=1, Threshold=1,
                                ComparisonOperator="GreaterThanThreshold")
    cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="test")
    config = config_for(tmp_path, moto)

    done = run_cli(config, "outbound", "status", "--json", check=False)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["quota"]["sent_last_24h"] == before + 3
    assert report["quota"]["max_24h_send"] > 0
    assert report["rates"]["bounce"] == {"rate": 0.06, "line": 0.05, "over_line": True}
    assert report["rates"]["complaint"]["over_line"] is False
    assert report["rates"]["source"] == "cloudwatch AWS/SES reputation metrics"
    names = [a["name"] for a in report["alarms"]["alarms"]]
    assert alarm in names and not any(n.startswith("unrelated") for n in names)
    assert "bounce rate over the SES review line" in report["problems"]
    assert f"alarm {alarm} is in ALARM" in report["problems"]
    # moto server implements neither GetAccount nor ListSuppressedDestinations: shown as unavailable.
    assert "error" in report["account"] and "error" in report["suppression"]

    text = cli(config, "outbound", "status", check=False).stdout
    assert "bounce rate: 6.000 % (line 5 %) OVER THE SES REVIEW LINE" in text
    assert text.splitlines()[-1].startswith("PROBLEMS: bounce rate over the SES review line")


class _Ok:
    status_code = 200


@pytest.fixture
def script(moto: Moto) -> Iterator[Callable[[str, dict[str, Any]], None]]:
    """Scripted answers on the shared SESv2 client, removed after the test."""
    client = aws.client(moto.aws_config, "sesv2")
    registered: list[tuple[str, Callable[..., Any]]] = []

    def add(operation: str, response: dict[str, Any]) -> None:
        def answer(**_: Any) -> tuple[_Ok, dict[str, Any]]:
            return _Ok(), response
        registered.append((f"before-call.sesv2.{operation}", answer))
        client.meta.events.register(*registered[-1])

    yield add
    for event, handler in registered:
        client.meta.events.unregister(event, handler)


def test_account_status_and_suppression_list(
    tmp_path: Path, moto: Moto, capsys: pytest.CaptureFixture[str], script: Callable[[str, dict[str, Any]], None]
) -> None:
    # Scripted because moto server lacks these two SESv2 calls; the command runs in this process
    # so the script can sit on the shared client. The other sections still come from moto.
    script("GetAccount", {"SendingEnabled": True, "EnforcementStatus": "PROBATION",
                                 "ProductionAccessEnabled": True})
    script("ListSuppressedDestinations", {"SuppressedDestinationSummaries": [
        {"EmailAddress": f"gone{i}@elsewhere.test", "Reason": "BOUNCE",
         "LastUpdateTime": datetime(2026, 1, i + 1, tzinfo=UTC)} for i in range(7)]})
    config = config_for(tmp_path, moto)
    assert main(["outbound", "status", "--json", "--config", str(config)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["account"] == {"sending_enabled": True, "enforcement_status": "PROBATION",
                                 "production_access": True}
    assert report["suppression"]["count"] == 7
    assert [e["address"] for e in report["suppression"]["newest"]] == [
        "gone6@elsewhere.test", "gone5@elsewhere.test", "gone4@elsewhere.test", "gone3@elsewhere.test",
        "gone2@elsewhere.test"]
    assert "account enforcement status PROBATION" in report["problems"]
