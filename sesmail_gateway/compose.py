"""Composition root: config → stores → spool → runner, and the SMTP side that feeds it.

The one place that chooses implementations (SQLite or DynamoDB, folder or
S3, Maildir or Gmail) and wires objects together; everything else sees the
small protocols. The daemon (``app.Gateway``) builds its delivery side here
and, with one SMTP worker, its SMTP side; each SMTP worker process
(``workers``) builds its SMTP side with the same function. Those two
modules keep only life cycles: start, stop, signals, supervision.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sesmail_gateway import aws
from sesmail_gateway.archive import Archiver
from sesmail_gateway.archive.local import FolderArchiver
from sesmail_gateway.archive.s3 import S3Archiver
from sesmail_gateway.bounce import Bouncer
from sesmail_gateway.bounce.ses import SesSender
from sesmail_gateway.checks.inspector import Inspector
from sesmail_gateway.config import Config, ConfigError
from sesmail_gateway.deliver import Deliverer
from sesmail_gateway.deliver.bounce import RuleBounce
from sesmail_gateway.deliver.gmail import GmailDeliverer
from sesmail_gateway.deliver.maildir import MaildirDeliverer
from sesmail_gateway.fsutil import PendingSyncs
from sesmail_gateway.metrics import Metrics, SessionMetrics
from sesmail_gateway.relay import MetricsRelay
from sesmail_gateway.routes import Action, RouteStore, Rule
from sesmail_gateway.routes.factory import open_route_store
from sesmail_gateway.routes.records import utc_now
from sesmail_gateway.routes.resolver import RouteResolver
from sesmail_gateway.runner import Runner
from sesmail_gateway.scan.factory import build_scanning
from sesmail_gateway.smtp.handler import GatewayHandler
from sesmail_gateway.smtp.limits import Limits
from sesmail_gateway.smtp.server import SMTPServer
from sesmail_gateway.spool import Spool
from sesmail_gateway.tokens import ClientCredentials, TokenStore
from sesmail_gateway.tokens.factory import load_client, open_token_store
from sesmail_gateway.tokens.watcher import TokenWatcher

log = logging.getLogger(__name__)

DEFAULT_MAILDIR = "mail"


# -- the SMTP side: in the daemon with one worker, else in each worker process --


@dataclass(frozen=True)
class SmtpSide:
    """What answers SMTP: rule look-ups and checks behind the handler, and the server."""

    resolver: RouteResolver
    inspector: Inspector
    handler: GatewayHandler
    server: SMTPServer

    def reload(self) -> None:
        """SIGHUP: forget cached routes and DNS answers."""
        self.resolver.invalidate()
        self.inspector.invalidate()

    async def drain(self, timeout: float) -> None:
        """At shutdown: let the sessions under way end (up to ``timeout``), then release the checks' threads."""
        await self.server.drain(timeout=timeout)
        self.inspector.close()


def build_smtp_side(config: Config, *, spool: Spool, store: RouteStore, metrics: SessionMetrics,
                    limits: Limits | None = None) -> SmtpSide:
    """The SMTP side over ``spool`` and ``store``, reporting to ``metrics``.

    ``limits`` are the connection counts shared between worker processes;
    without them the server counts its own connections.
    """
    resolver = RouteResolver(store, cache_seconds=config.rules.cache_seconds)
    inspector = Inspector(config=config.checks, hostname=config.gateway.hostname)
    handler = GatewayHandler(config=config, resolver=resolver, spool=spool, metrics=metrics, inspector=inspector,
                             scanning=build_scanning(config, observe=metrics.scan_result))
    return SmtpSide(resolver, inspector, handler, SMTPServer(config, handler, limits))


@dataclass(frozen=True)
class WorkerSide:
    """An SMTP worker process: its own journal writer on the shared spool, its rule store, its SMTP side."""

    spool: Spool
    store: RouteStore
    smtp: SmtpSide


def build_worker_side(config: Config, relay: MetricsRelay, limits: Limits) -> WorkerSide:
    """Everything an SMTP worker runs; what the daemon must know goes through ``relay``."""
    # Accepted messages go to the runner as journal records; the main process adopts a dead worker's journals.
    spool = Spool(config.data_dir / "spool", on_commit=relay.observe_commit, on_ready=relay.queued,
                  on_accepted=relay.accepted, on_sealed=relay.sealed)
    store = open_route_store(config)
    return WorkerSide(spool, store, build_smtp_side(config, spool=spool, store=store, metrics=relay, limits=limits))


# -- the delivery side: in the daemon --


@dataclass(frozen=True)
class DeliverySide:
    """The daemon's spool (it sweeps), rule store (it seeds), runner, and the Gmail token watcher."""

    spool: Spool
    store: RouteStore
    runner: Runner
    tokens: TokenWatcher


def build_delivery_side(config: Config, metrics: Metrics) -> DeliverySide:
    """Open the spool and the stores, and wire the runner to them; nothing starts yet."""
    spool = Spool(config.data_dir / "spool", on_commit=metrics.observe_commit, sweeper=True)
    metrics.track_queue(spool.counts)
    store = open_route_store(config)
    seed_default_route(store, config)
    gmail, token_store = open_gmail(config, metrics)
    runner = Runner(
        spool=spool, archiver=open_archiver(config, spool.syncs),
        deliverers=build_deliverers(config, spool.syncs, gmail),
        config=config.delivery, metrics=metrics, bouncer=open_bouncer(config, spool),
    )
    metrics.track_destinations(runner.destinations.status)
    tokens = TokenWatcher(store=token_store, deliverer=gmail, runner=runner, config=config.gmail, metrics=metrics)
    spool.on_ready = runner.notify
    # Accepted messages go from the journal straight to the runner; the runner retires the segments.
    spool.on_accepted = runner.accept
    spool.on_sealed = spool.segments.sealed
    return DeliverySide(spool, store, runner, tokens)


def open_archiver(config: Config, syncs: PendingSyncs) -> Archiver:
    scheme, _, rest = config.archive.url.partition("://")
    if scheme == "file":
        return FolderArchiver(config.data_path(rest or "archive"), syncs)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"archive.url: expected s3://BUCKET/PREFIX, got {config.archive.url!r}")
        return S3Archiver(bucket, prefix, aws_config=config.aws, kms_key_id=config.archive.kms_key_id)
    raise ConfigError(f"archive.url: the {scheme}:// archive is not available in this version")


def open_bouncer(config: Config, spool: Spool) -> Bouncer | None:
    """With ``bounce.mode = "dsn"``, dead letters may earn a DSN sent through SES."""
    if config.bounce.mode != "dsn":
        return None
    if not (config.aws.region or config.aws.endpoint_url or aws.default_region()):
        # The local default: the dead-letter record carries the reason; nothing is sent.
        log.warning("bounce.mode = dsn without an AWS region (aws.region): DSNs are not sent through SES; "
                    "dead letters keep the reason")
        return None
    return Bouncer(sender=SesSender(config.aws), from_address=config.bounce.sender,
                   reporting_mta=config.gateway.hostname, message_path=spool.message_path)


def open_gmail(config: Config, metrics: Metrics) -> tuple[GmailDeliverer, TokenStore]:
    store = open_token_store(config)

    def client() -> ClientCredentials | None:
        return load_client(config, store)

    deliverer = GmailDeliverer(
        store=store, client=client, label_ids=config.gmail.label_ids, api_endpoint=config.gmail.api_endpoint,
        token_uri=config.gmail.token_uri,
        on_import=lambda account, seconds: metrics.gmail_import_seconds.observe(seconds),
    )
    return deliverer, store


def build_deliverers(config: Config, syncs: PendingSyncs, gmail: GmailDeliverer) -> Mapping[str, Deliverer]:
    return {
        "maildir": MaildirDeliverer(config.data_dir, syncs),
        "bounce": RuleBounce(),
        "forward-to-gmail": gmail,
    }


def seed_default_route(store: RouteStore, config: Config) -> bool:
    """On the embedded SQLite store, an empty rule table gets ``*`` → Maildir ``mail/``."""
    if not config.rules.url.startswith("sqlite://") or store.list():
        return False
    now = utc_now()
    store.put(Rule(pattern="*", actions=(Action("maildir", DEFAULT_MAILDIR),),
                   description="catch-all seeded on first start", created_at=now, updated_at=now))
    log.info("routes: empty rule table; seeded catch-all * -> maildir %s", DEFAULT_MAILDIR)
    return True
