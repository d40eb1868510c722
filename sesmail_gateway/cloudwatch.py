"""CloudWatch metrics: the Prometheus figures, published every interval with PutMetricData.

When ``metrics.cloudwatch_namespace`` is set, a background thread reads the
daemon's own Prometheus registry (so both views always agree) and sends
the key figures: counters as the increase since the last publish, gauges
as they are. It runs off the event loop and off the SMTP path; a failure
to publish is logged and the next interval tries again, it never touches
mail. ``TokenSecondsUntilExpiration`` keeps the seed system's name so its
alarms keep working.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry

from sesmail_gateway import aws
from sesmail_gateway.config import AwsConfig

log = logging.getLogger(__name__)

DATUMS_PER_CALL = 500  # PutMetricData takes up to 1,000 datums (1 MB) per call


@dataclass(frozen=True)
class Published:
    """How one Prometheus family appears in CloudWatch."""

    name: str
    unit: str
    dimensions: tuple[tuple[str, str], ...] = ()  # (prometheus label, CloudWatch dimension)
    counter: bool = True


# Prometheus family name → CloudWatch metric.
TABLE = {
    "sesmail_messages_accepted": Published("MessagesAccepted", "Count"),
    "sesmail_messages_rejected": Published("MessagesRejected", "Count", (("reason", "Reason"),)),
    "sesmail_auth_results": Published("AuthResults", "Count", (("method", "Method"), ("result", "Result"))),
    "sesmail_deliveries": Published("Deliveries", "Count", (("action", "Action"), ("outcome", "Outcome"))),
    "sesmail_queue_depth": Published("QueueDepth", "Count", (("state", "State"),), counter=False),
    "sesmail_gmail_token_seconds_left": Published("TokenSecondsUntilExpiration", "Seconds",
                                                  (("account", "Account"),), counter=False),
}


class CloudWatchPublisher:
    """Publishes ``registry`` to ``namespace`` every ``interval`` seconds from its own thread."""

    def __init__(self, registry: CollectorRegistry, namespace: str, *, aws_config: AwsConfig,
                 interval: float = 60.0) -> None:
        self.registry = registry
        self.namespace = namespace
        self.interval = interval
        self._aws_config = aws_config
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cloudwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last publish, so the final counts are not lost."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def datums(self) -> list[dict[str, Any]]:
        """The datums one publish would send now; advances the counters' baselines."""
        found: list[dict[str, Any]] = []
        for family in self.registry.collect():
            published = TABLE.get(family.name)
            if published is not None:
                found += self._family(published, family.samples)
        return found

    def publish(self) -> int:
        """Send one round of datums; returns how many. Never raises: a failure is logged."""
        try:
            datums = self.datums()
            client = aws.client(self._aws_config, "cloudwatch")
            for start in range(0, len(datums), DATUMS_PER_CALL):
                client.put_metric_data(Namespace=self.namespace, MetricData=datums[start:start + DATUMS_PER_CALL])
        except (BotoCoreError, ClientError) as exc:
            log.warning("cloudwatch: publishing to %s failed (next try in %.0fs): %s",
                        self.namespace, self.interval, exc)
            return 0
        except Exception:
            log.exception("cloudwatch: unexpected error while publishing")
            return 0
        return len(datums)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()
        self.publish()

    def _family(self, published: Published, samples: Iterable[Any]) -> list[dict[str, Any]]:
        datums = []
        for sample in samples:
            if published.counter and not sample.name.endswith("_total"):
                continue  # the _created timestamps of counters
            value = float(sample.value)
            if not math.isfinite(value):
                continue  # CloudWatch takes finite numbers only (a token that never expires)
            dimensions = tuple((dim, str(sample.labels.get(label, ""))) for label, dim in published.dimensions)
            if published.counter:
                key = (published.name, dimensions)
                value, self._last[key] = value - self._last.get(key, 0.0), value
            datums.append({
                "MetricName": published.name, "Unit": published.unit, "Value": value,
                "Dimensions": [{"Name": name, "Value": text} for name, text in dimensions if text],
            })
        return datums
