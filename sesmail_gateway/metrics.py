"""Prometheus metrics and the /metrics + /healthz HTTP endpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sesmail_gateway.config import parse_hostport


class SessionMetrics(Protocol):
    """What SMTP sessions report; the daemon's Metrics, or a relay in a worker process."""

    def observe_commit(self, seconds: float, batch: int) -> None: ...

    def message_accepted(self, size: int) -> None: ...

    def refused(self, reason: str) -> None: ...

    def connection_refused(self, outcome: str) -> None: ...

    def auth_result(self, method: str, result: str) -> None: ...

    def scan_result(self, scanner: str, result: str, seconds: float) -> None: ...


class Metrics:
    """Every metric the daemon exports, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Counter("sesmail_smtp_connections", "SMTP connections", ["outcome"], registry=r)
        self.accepted = Counter("sesmail_messages_accepted", "Messages accepted and queued (250)", registry=r)
        self.rejected = Counter(
            "sesmail_messages_rejected", "Messages or recipients refused, by reason", ["reason"], registry=r
        )
        self.deliveries = Counter(
            "sesmail_deliveries", "Delivery attempts by action and outcome", ["action", "outcome"], registry=r
        )
        self.fsync_seconds = Histogram(
            "sesmail_spool_fsync_seconds", "Time of one group commit (flush, rename, folder fsync)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r,
        )
        self.commit_batch = Histogram(
            "sesmail_spool_commit_batch_size", "Messages made durable by one group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )
        self.auth_results = Counter(
            "sesmail_auth_results", "Authentication verdicts by method (spf, dkim, arc, dmarc) and result",
            ["method", "result"], registry=r,
        )
        self.accept_bytes = Counter("sesmail_accepted_bytes", "Bytes of accepted messages", registry=r)
        self.scan_results = Counter(
            "sesmail_scan_results", "Scanner verdicts by scanner and result (clean, spam, virus, error)",
            ["scanner", "result"], registry=r,
        )
        self.scan_seconds = Histogram(
            "sesmail_scan_seconds", "Time of one scan by scanner, failures included", ["scanner"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=r,
        )
        self.gmail_token_seconds_left = Gauge(
            "sesmail_gmail_token_seconds_left",
            "Seconds until the account's Gmail refresh token is assumed to expire (+Inf: never)",
            ["account"], registry=r,
        )
        self.replayed = Counter(
            "sesmail_replayed_deliveries",
            "Deliveries of messages replayed from the journals at start-up: skipped (recorded as made before "
            "the restart) or repeated (remote, not recorded: possibly made twice)", ["outcome"], registry=r,
        )
        self.gmail_import_seconds = Histogram(
            "sesmail_gmail_import_seconds", "Time of one Gmail import request, upload included",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0), registry=r,
        )

    # The session-side events: also implemented by relay.MetricsRelay in worker processes.

    def observe_commit(self, seconds: float, batch: int) -> None:
        self.fsync_seconds.observe(seconds)
        self.commit_batch.observe(batch)

    def message_accepted(self, size: int) -> None:
        self.messages_accepted(1, size)

    def refused(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def connection_refused(self, outcome: str) -> None:
        self.connections.labels(outcome=outcome).inc()

    def auth_result(self, method: str, result: str, count: int = 1) -> None:
        self.auth_results.labels(method=method, result=result).inc(count)

    def messages_accepted(self, count: int, size: int) -> None:
        """``message_accepted`` for ``count`` messages of ``size`` bytes in all (a worker's sum)."""
        self.accepted.inc(count)
        self.accept_bytes.inc(size)

    def scan_result(self, scanner: str, result: str, seconds: float) -> None:
        self.scan_results.labels(scanner=scanner, result=result).inc()
        self.scan_seconds.labels(scanner=scanner).observe(seconds)

    def track_destinations(self, status: Callable[[], Iterable[Any]]) -> None:
        """Export the destinations that are down, with how many messages wait for each."""
        self.registry.register(_Destinations(status))

    def track_queue(self, counts: Callable[[], dict[str, int]]) -> None:
        """Export queue depth by state, read from the spool at scrape time."""
        self.registry.register(_QueueDepth(counts))


class _Destinations(Collector):
    def __init__(self, status: Callable[[], Iterable[Any]]) -> None:
        self._status = status

    def collect(self) -> Iterable[GaugeMetricFamily]:
        parked = GaugeMetricFamily("sesmail_destination_parked",
                                   "Messages waiting for a destination that is failing (one probe per backoff step)",
                                   labels=["destination"])
        for entry in self._status():
            parked.add_metric([entry.destination], entry.parked)
        yield parked


class _QueueDepth(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("sesmail_queue_depth", "Messages in the spool by state", labels=["state"])
        for state, count in self._counts().items():
            family.add_metric([state], count)
        yield family


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """Serves /metrics from the registry and /healthz from a health callback."""

    def __init__(self, metrics: Metrics, listen: str, healthy: Callable[[], tuple[bool, str]]) -> None:
        host, port = parse_hostport(listen)
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                ok, detail = healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [f"{'ok' if ok else 'unhealthy'}: {detail}\n".encode()]
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        self._server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
