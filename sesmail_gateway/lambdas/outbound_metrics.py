"""CloudWatch metrics from SES sending events, delivered through SNS.

The SES configuration set publishes Send, Delivery, Bounce, Complaint and
Reject events to an SNS topic; each notification carries one event as JSON
(``eventType`` for configuration-set events, ``notificationType`` for identity
notifications). Every event becomes a count of 1 on its metric in the
``SESMail/<env>`` namespace:

    Send → OutboundSend            Delivery → OutboundDelivery
    Bounce → OutboundBounce, plus OutboundBounceHard (Permanent)
                                 or OutboundBounceSoft (Transient)
    Complaint → OutboundComplaint  Reject → OutboundReject

Other event types (Open, Click, DeliveryDelay, …) are logged and skipped. A
notification that is not an SES event is logged and skipped: retrying would
not change it. A CloudWatch failure raises, so Lambda retries the invocation
and then hands it to the dead-letter queue.

This module is deployed on its own: it imports nothing else from the package.
Environment: ``METRICS_NAMESPACE``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

METRIC_FOR_EVENT = {
    "Send": "OutboundSend",
    "Delivery": "OutboundDelivery",
    "Bounce": "OutboundBounce",
    "Complaint": "OutboundComplaint",
    "Reject": "OutboundReject",
}
METRIC_FOR_BOUNCE_TYPE = {"Permanent": "OutboundBounceHard", "Transient": "OutboundBounceSoft"}
METRICS = (
    "OutboundSend",
    "OutboundDelivery",
    "OutboundBounce",
    "OutboundBounceHard",
    "OutboundBounceSoft",
    "OutboundComplaint",
    "OutboundReject",
)

_log = logging.getLogger("sesmail.lambda.outbound_metrics")


def metrics_for(ses_event: dict[str, Any]) -> list[str]:
    """The metric names one SES event counts towards (empty for types not tracked)."""
    kind = ses_event.get("eventType") or ses_event.get("notificationType")
    metric = METRIC_FOR_EVENT.get(str(kind))
    if metric is None:
        return []
    names = [metric]
    if kind == "Bounce":
        bounce_type = (ses_event.get("bounce") or {}).get("bounceType")
        if bounce_type in METRIC_FOR_BOUNCE_TYPE:
            names.append(METRIC_FOR_BOUNCE_TYPE[bounce_type])
    return names


def ses_events(sns_event: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """The SES event inside each SNS record; malformed ones are logged and skipped."""
    for record in sns_event.get("Records", []):
        message = (record.get("Sns") or {}).get("Message", "")
        try:
            parsed = json.loads(message)
        except (TypeError, ValueError):
            _log_line("skipped", reason="not JSON")
            continue
        if not isinstance(parsed, dict):
            _log_line("skipped", reason="not an SES event")
            continue
        yield parsed


def count(sns_event: dict[str, Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for ses_event in ses_events(sns_event):
        names = metrics_for(ses_event)
        if not names:
            _log_line("skipped", type=ses_event.get("eventType") or ses_event.get("notificationType"))
        counts.update(names)
    return counts


@dataclass(frozen=True)
class Clients:
    """The CloudWatch client and namespace, injected so tests pass their own."""

    cloudwatch: Any
    namespace: str


def publish(clients: Clients, counts: Counter[str]) -> None:
    """One PutMetricData call for the batch (at most seven metrics)."""
    if not counts:
        return
    data = [{"MetricName": name, "Value": float(counts[name]), "Unit": "Count"} for name in METRICS if counts[name]]
    clients.cloudwatch.put_metric_data(Namespace=clients.namespace, MetricData=data)


def handle(event: dict[str, Any], clients: Clients) -> dict[str, int]:
    counts = count(event)
    publish(clients, counts)
    _log_line("published", **{name: counts[name] for name in METRICS if counts[name]})
    return dict(counts)


def _log_line(outcome: str, **fields: Any) -> None:
    # Event types and counts only: addresses from the events never reach the log.
    _log.info(json.dumps({"event": "outbound_metrics", "outcome": outcome, **fields}, separators=(",", ":")))


_clients: Clients | None = None


def handler(event: dict[str, Any], context: object) -> dict[str, int]:
    """Lambda entry point (SNS subscription)."""
    global _clients
    logging.getLogger().setLevel(logging.INFO)
    if _clients is None:
        import boto3  # provided by the Lambda runtime; imported here so tests inject their own

        _clients = Clients(cloudwatch=boto3.client("cloudwatch"), namespace=os.environ["METRICS_NAMESPACE"])
    return handle(event, _clients)
