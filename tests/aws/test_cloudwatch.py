"""CloudWatch metric data in moto server: the publisher, and the daemon's last publish at shutdown."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sesmail_gateway.cloudwatch import CloudWatchPublisher
from sesmail_gateway.config import AwsConfig
from sesmail_gateway.metrics import Metrics
from tests.aws.motoserver import REGION, Moto
from tests.conftest import Gateway, free_port


def total(moto: Moto, namespace: str, name: str, dimensions: list[dict[str, str]] | None = None) -> float:
    now = datetime.now(UTC)
    answer = moto.client("cloudwatch").get_metric_statistics(
        Namespace=namespace, MetricName=name, Dimensions=dimensions or [], Statistics=["Sum"],
        StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5), Period=60)
    return float(sum(point["Sum"] for point in answer["Datapoints"]))


def names(moto: Moto, namespace: str) -> set[str]:
    metrics: list[dict[str, Any]] = moto.client("cloudwatch").list_metrics(Namespace=namespace)["Metrics"]
    return {m["MetricName"] for m in metrics}


def test_counters_are_sent_as_increases_and_gauges_as_values(moto: Moto, unique: Callable[[str], str]) -> None:
    namespace = f"SESMail/{unique('t')}"
    metrics = Metrics()
    metrics.track_queue(lambda: {"incoming": 2, "deferred": 1})
    metrics.message_accepted(100)
    metrics.message_accepted(100)
    metrics.refused("no-such-user")
    metrics.deliveries.labels(action="maildir", outcome="delivered").inc()
    metrics.gmail_token_seconds_left.labels(account="a@gmail.com").set(3600)
    metrics.gmail_token_seconds_left.labels(account="b@gmail.com").set(float("inf"))
    publisher = CloudWatchPublisher(metrics.registry, namespace, aws_config=moto.aws_config)

    assert publisher.publish() > 0
    metrics.message_accepted(100)
    publisher.publish()
    assert total(moto, namespace, "MessagesAccepted") == 3.0  # 2, then the increase of 1
    assert total(moto, namespace, "MessagesRejected", [{"Name": "Reason", "Value": "no-such-user"}]) == 1.0
    assert total(moto, namespace, "Deliveries", [{"Name": "Action", "Value": "maildir"},
                                                 {"Name": "Outcome", "Value": "delivered"}]) == 1.0
    assert total(moto, namespace, "QueueDepth", [{"Name": "State", "Value": "incoming"}]) == 4.0  # 2 + 2
    assert total(moto, namespace, "TokenSecondsUntilExpiration",
                 [{"Name": "Account", "Value": "a@gmail.com"}]) == 7200.0
    assert total(moto, namespace, "TokenSecondsUntilExpiration",
                 [{"Name": "Account", "Value": "b@gmail.com"}]) == 0.0  # never expires: not sent


def test_a_failure_to_publish_is_logged_not_raised(caplog: Any) -> None:
    closed = AwsConfig(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}")
    publisher = CloudWatchPublisher(Metrics().registry, "SESMail/none", aws_config=closed)
    assert publisher.publish() == 0
    assert "cloudwatch: publishing to SESMail/none failed" in caplog.text


def test_daemon_publishes_with_a_namespace_set(
    make_gateway: Callable[..., Gateway], moto: Moto, unique: Callable[[str], str]
) -> None:
    namespace = f"SESMail/{unique('gw')}"
    gateway = make_gateway({"metrics": {"cloudwatch_namespace": namespace}, "aws": moto.aws_section})
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.sendmail("s@elsewhere.test", ["bob@example.test"], b"Subject: counted\r\n\r\nbody\r\n")
    gateway.wait_delivered(1)
    assert gateway.stop() == 0  # the last publish happens on the way out
    assert total(moto, namespace, "MessagesAccepted") == 1.0
    assert {"MessagesAccepted", "Deliveries", "QueueDepth", "AuthResults"} <= names(moto, namespace)
