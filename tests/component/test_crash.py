"""Scenario: kill -9 while four clients send 200 messages; nothing that got a 250 is lost.

Each client retries a message until it gets a 250, as a sending MTA does, so
the run also shows recovery after restart. A message whose 250 was cut off by
the kill may arrive twice (the sender retries it); that count is reported and
bounded by the number of clients.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.conftest import Gateway, wait_for

CLIENTS = 4
PER_CLIENT = 50
SEQ = re.compile(rb"X-Test-Seq: (\S+)")


def send_all(gateway: Gateway, client: int, acked: list[str], deadline: float, refused: list[int]) -> None:
    for n in range(PER_CLIENT):
        seq = f"c{client}-m{n}"
        body = (f"From: s{client}@sender.test\r\nTo: rcpt@example.test\r\nSubject: crash {seq}\r\n"
                f"X-Test-Seq: {seq}\r\n\r\n" + "payload line\r\n" * 40).encode()
        while time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
                    smtp.ehlo("client.test")
                    smtp.mail(f"s{client}@sender.test")
                    smtp.rcpt("rcpt@example.test")
                    code, _ = smtp.data(body)
                if code == 250:
                    acked.append(seq)
                    break
            except (OSError, smtplib.SMTPException):
                refused.append(client)
                time.sleep(0.05)  # the gateway is down: retry soon, as an MTA would (a pace, not a wait)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_01_kill_9_during_load_loses_no_acknowledged_message(make_gateway: Callable[..., Gateway], workers: int) -> None:
    gateway = make_gateway({"smtp": {"workers": workers}})
    acked: list[str] = []
    deadline = time.monotonic() + 90
    refused: list[int] = []
    threads = [threading.Thread(target=send_all, args=(gateway, c, acked, deadline, refused))
               for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acked) >= 60, timeout=30)
    gateway.kill_all()
    acked_before_kill = len(acked)
    wait_for(lambda: refused)  # the clients have found the gateway down before it comes back
    gateway.start()
    for thread in threads:
        thread.join(timeout=100)

    assert len(set(acked)) == CLIENTS * PER_CLIENT, "every message eventually got a 250"
    wait_for(lambda: {m.group(1).decode() for raw in gateway.delivered() if (m := SEQ.search(raw))} >= set(acked),
             timeout=30)
    delivered = Counter(m.group(1).decode() for raw in gateway.delivered() if (m := SEQ.search(raw)))
    duplicates = {seq: n for seq, n in delivered.items() if n > 1}
    print(f"\ncrash test ({workers} worker(s)): {acked_before_kill} acknowledged before kill -9, {len(set(acked))} in all, "
          f"{sum(delivered.values())} delivered, {len(duplicates)} duplicate(s) {sorted(duplicates)}")
    assert set(delivered) == set(acked)
    assert len(duplicates) <= CLIENTS, "only messages in flight at the kill may arrive twice"
    assert gateway.stop() == 0
