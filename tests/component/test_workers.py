"""Scenarios with several SMTP worker processes sharing the port."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import urllib.request
from collections.abc import Callable

from sesmail_gateway.smtp.limits import SharedLimits
from tests.conftest import Gateway, wait_for


def banner(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock, sock.recv(512)


def test_01_two_workers_accept_deliver_and_report_into_one_metrics_endpoint(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway({"smtp": {"workers": 2}})
    ids = set()
    for n in range(12):  # new connections spread over both workers
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("s@sender.test")
            smtp.rcpt("bob@example.test")
            code, reply = smtp.data(f"From: s@sender.test\r\nSubject: {n}\r\n\r\nbody\r\n".encode())
            assert code == 250
            ids.add(reply.decode().rsplit(" ", 1)[-1])
    assert len(ids) == 12
    gateway.wait_delivered(12)

    def accepted() -> bool:
        url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return "sesmail_messages_accepted_total 12.0" in response.read().decode()

    wait_for(accepted)
    assert gateway.stop() == 0


def test_02_connection_limits_hold_across_workers_and_survive_a_worker_crash(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway({"smtp": {"workers": 2, "max_connections_per_ip": 3}})
    held = [banner(gateway.port) for _ in range(3)]
    assert all(greeting.startswith(b"220 ") for _, greeting in held)
    sock, greeting = banner(gateway.port)
    assert greeting.startswith(b"421 4.7.0 ")
    sock.close()

    # kill -9 one worker while it holds sessions: its counts must not leak.
    assert gateway.proc is not None
    workers = subprocess.run(["pgrep", "-P", str(gateway.proc.pid), "-f", "spawn_main"],
                             capture_output=True, text=True).stdout.split()
    assert len(workers) >= 2
    subprocess.run(["kill", "-9", workers[0]], check=True)
    for sock, _ in held:
        sock.close()

    def three_admitted_after_restart() -> bool:
        try:
            opened = [banner(gateway.port) for _ in range(3)]
        except OSError:  # a connection the dead worker's socket had queued is reset
            return False
        ok = all(greeting.startswith(b"220 ") for _, greeting in opened)
        for sock, _ in opened:
            sock.close()
        return ok

    wait_for(three_admitted_after_restart, timeout=20, interval=0.5)
    gateway.signal(signal.SIGTERM)
    assert gateway.proc.wait(30) == 0


def test_03_shared_limits_count_every_slot_and_reset_clears_one() -> None:
    limits = SharedLimits(max_connections=3, max_per_ip=2, slots=2)
    first, second = limits.bind(0), SharedLimits.__new__(SharedLimits)
    second.__dict__.update(limits.__dict__)
    second.bind(1)
    assert first.acquire("192.0.2.1") is None
    assert second.acquire("192.0.2.1") is None
    assert first.acquire("192.0.2.1") is not None  # per IP, across both slots
    assert second.acquire("192.0.2.9") is None
    assert first.acquire("192.0.2.8") is not None  # the total, across both slots
    limits.reset(1)  # worker 1 died
    assert first.acquire("192.0.2.1") is None


def test_04_workers_do_not_outlive_a_killed_main_process(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"smtp": {"workers": 2}})
    assert gateway.proc is not None
    workers = subprocess.run(["pgrep", "-P", str(gateway.proc.pid), "-f", "spawn_main"],
                             capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    gateway.kill()  # kill -9 the main process only

    def gone() -> bool:
        alive = subprocess.run(["ps", "-o", "pid=", "-p", ",".join(workers)], capture_output=True, text=True)
        return not alive.stdout.strip()

    wait_for(gone, timeout=20)
    refused = socket.socket()
    assert refused.connect_ex(("127.0.0.1", gateway.port)) != 0  # nobody left on the port
    refused.close()
