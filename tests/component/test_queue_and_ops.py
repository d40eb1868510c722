"""Scenarios around the queue, the admin CLI, metrics and configuration errors."""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Gateway, wait_for, write_config


def send(gateway: Gateway, rcpt: str = "bob@example.test", subject: str = "hello") -> str:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("alice@sender.test")
        smtp.rcpt(rcpt)
        code, reply = smtp.data(f"Subject: {subject}\r\nFrom: alice@sender.test\r\n\r\nbody\r\n".encode())
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def queue_json(gateway: Gateway, *args: str) -> list[dict[str, object]]:
    return list(json.loads(gateway.cli("queue", "list", "--json", *args).stdout))


def block_maildir(gateway: Gateway) -> None:
    """Make the Maildir target unusable (a file where the folder should be): a temporary failure."""
    gateway.maildir.parent.mkdir(parents=True, exist_ok=True)
    gateway.maildir.write_text("not a folder")


def test_01_failing_delivery_is_deferred_then_retried_by_the_operator(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"delivery": {"backoff_base": "1h", "backoff_max": "2h"}})
    block_maildir(gateway)
    queue_id = send(gateway)
    wait_for(lambda: queue_json(gateway, "--state", "deferred"), timeout=10)
    [entry] = queue_json(gateway, "--state", "deferred")
    assert entry["id"] == queue_id
    assert entry["attempts"] == 1 and entry["recipients"] == ["bob@example.test"]
    assert entry["next_attempt"] and "maildir:mail" in str(entry["reason"])
    shown = json.loads(gateway.cli("queue", "show", queue_id, "--json").stdout)
    assert shown["deliveries"][0]["status"] == "pending" and shown["archived"]
    text = gateway.cli("queue", "show", queue_id).stdout
    assert "delivery:    maildir:mail [pending] attempts=1" in text

    gateway.maildir.unlink()
    assert "queued 1 message(s)" in gateway.cli("queue", "retry", queue_id).stdout
    [raw] = gateway.wait_delivered(1)
    assert b"Subject: hello" in raw
    wait_for(lambda: not queue_json(gateway))
    events = {e["event"] for e in gateway.events() if e.get("queue_id") == queue_id}
    assert {"received", "queued", "archived", "deferred", "delivered"} <= events


def test_02_dead_after_max_age_then_redriven(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"delivery": {"max_age": "1s", "backoff_base": "1s", "backoff_max": "1s"}})
    block_maildir(gateway)
    queue_id = send(gateway)
    wait_for(lambda: queue_json(gateway, "--state", "dead"), timeout=15)
    [dead] = queue_json(gateway, "--state", "dead")
    assert dead["id"] == queue_id and "gave up after" in str(dead["reason"])
    assert [e["queue_id"] for e in gateway.events("dead")] == [queue_id]

    gateway.maildir.unlink()
    gateway.cli("queue", "retry", "--all")
    gateway.wait_delivered(1)


def test_03_queue_delete_and_errors(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"delivery": {"backoff_base": "1h", "backoff_max": "2h"}})
    block_maildir(gateway)
    queue_id = send(gateway)
    wait_for(lambda: queue_json(gateway, "--state", "deferred"))
    assert f"deleted {queue_id}" in gateway.cli("queue", "delete", queue_id).stdout
    assert queue_json(gateway) == []
    missing = gateway.cli("queue", "show", queue_id, check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert f"no message with id {queue_id}" in missing.stderr
    bad = gateway.cli("queue", "release", "NOPE", check=False)
    assert bad.returncode == 1
    listing = gateway.cli("queue", "list").stdout
    assert listing.splitlines()[0] == "(none)"  # (a line may follow on a destination still failing)


def test_04_metrics_and_health(gateway: Gateway) -> None:
    send(gateway)
    gateway.wait_delivered(1)
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("x@sender.test")
        assert smtp.rcpt("y@elsewhere.test")[0] == 550

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    wait_for(lambda: 'sesmail_deliveries_total{action="maildir",outcome="delivered"} 1.0' in scrape())
    text = scrape()
    assert "sesmail_messages_accepted_total 1.0" in text
    assert 'sesmail_messages_rejected_total{reason="relay-denied"} 1.0' in text
    assert 'sesmail_queue_depth{state="incoming"} 0.0' in text
    assert "sesmail_spool_fsync_seconds_count 1.0" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/healthz", timeout=5) as response:
        assert response.status == 200 and response.read().startswith(b"ok")


def test_05_bad_config_stops_start_up_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", {"smtp": {"listen": ["127.0.0.1:2525"], "max_conections": 5}})
    result = subprocess.run([sys.executable, "-m", "sesmail_gateway", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == "sesmail-gateway: config: smtp.max_conections: unknown key"


def test_06_no_config_at_all_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sesmail_gateway", "queue", "list"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "pass --config FILE or set SESMAIL_GATEWAY_CONFIG" in result.stderr


def test_07_sigterm_stops_cleanly_and_restart_keeps_the_queue(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"delivery": {"backoff_base": "1h", "backoff_max": "2h"}})
    block_maildir(gateway)
    queue_id = send(gateway)
    wait_for(lambda: queue_json(gateway, "--state", "deferred"))
    gateway.signal(signal.SIGTERM)
    assert gateway.proc is not None and gateway.proc.wait(20) == 0
    gateway.maildir.unlink()
    gateway.start()
    assert [e["id"] for e in queue_json(gateway, "--state", "deferred")] == [queue_id]
    gateway.cli("queue", "retry", queue_id)
    gateway.wait_delivered(1)


def test_08_a_spool_that_cannot_be_written_answers_451_and_recovers(gateway: Gateway) -> None:
    send(gateway)  # a journal file is open now
    journal = gateway.data_dir / "spool" / "journal"
    wait_for(lambda: not list(journal.iterdir()), timeout=10)  # the checkpoint retired it
    journal.rmdir()
    journal.write_text("not a folder: no journal can be created")
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail("alice@sender.test")
        smtp.rcpt("bob@example.test")
        code, reply = smtp.data(b"From: alice@sender.test\r\nSubject: lost?\r\n\r\nbody\r\n")
    assert (code, reply) == (451, b"4.3.0 Could not queue the message, try again later")
    journal.unlink()
    journal.mkdir()
    send(gateway, subject="after")
    delivered = gateway.wait_delivered(2)
    assert not any(b"Subject: lost?" in raw for raw in delivered)


def test_09_store_only_routes_are_archived_and_not_delivered(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(start=False)
    gateway.cli("routes", "add", "*", "--action", "store", "--description", "archive only")
    gateway.start()
    queue_id = send(gateway)
    wait_for(lambda: [e for e in gateway.events("archived") if e["queue_id"] == queue_id])
    wait_for(lambda: not queue_json(gateway))
    assert list((gateway.data_dir / "archive").rglob(f"{queue_id}.eml"))
    assert gateway.delivered() == [] and gateway.events("delivered") == []


def test_10_bounce_rules_in_dsn_mode_accept_then_dead_letter_with_the_reason(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway({"bounce": {"mode": "dsn"}}, start=False)
    gateway.cli("routes", "add", "gone@example.test", "--action", "bounce")
    gateway.cli("routes", "add", "*", "--action", "maildir", "--target", "mail")
    gateway.start()
    queue_id = send(gateway, rcpt="gone@example.test")  # accepted: no 550 at RCPT in dsn mode
    wait_for(lambda: queue_json(gateway, "--state", "dead"))
    [dead] = queue_json(gateway, "--state", "dead")
    assert dead["id"] == queue_id and "refused by routing rule" in str(dead["reason"])
    assert gateway.delivered() == []


def test_a_second_daemon_on_the_same_data_dir_is_refused(make_gateway: Callable[..., Gateway]) -> None:
    first = make_gateway()
    second = make_gateway(subdir="second", start=False)
    # The same data dir, its own ports: only the lock can stop it.
    config = second.config.read_text().replace(str(second.data_dir), str(first.data_dir))
    second.config.write_text(config)
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    lines = second.log().strip().splitlines()
    assert len(lines) == 1 and "is in use by another sesmail-gateway" in lines[0] and str(first.proc.pid) in lines[0]
    send(first)
    first.wait_delivered(1)


def test_a_taken_metrics_port_is_one_line_and_exit_2(make_gateway: Callable[..., Gateway]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        gateway = make_gateway({"metrics": {"listen": f"127.0.0.1:{busy.getsockname()[1]}"}}, start=False)
        gateway.start(wait=False)
        assert gateway.proc is not None
        assert gateway.proc.wait(30) == 2
    assert "metrics.listen: cannot listen" in gateway.log() and "Traceback" not in gateway.log()
    assert not (gateway.data_dir / "spool").exists()  # nothing touched before the sockets were bound


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_smtp_port_is_one_line_before_the_spool_is_touched(make_gateway: Callable[..., Gateway],
                                                                   workers: int) -> None:
    """The daemon binds the SMTP sockets (its own, or its workers') before it touches the spool. A port
    still taken is exit 1, not 2: a restart may find it free (a predecessor that was still draining)."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        gateway = make_gateway({"smtp": {"workers": workers, "listen": [address]}}, start=False)
        gateway.start(wait=False)
        assert gateway.proc is not None
        assert gateway.proc.wait(30) == 1
    assert f"smtp.listen {address}: Address already in use" in gateway.log() and "Traceback" not in gateway.log()
    assert not (gateway.data_dir / "spool").exists()
