"""Scenarios with several SMTP worker processes sharing the daemon's listening socket.

The process tree: the daemon, one fork server (``sesmail-forks``) forked
from it before it starts any thread, and the workers (``sesmail-smtp-N``)
forked from that server.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from sesmail_gateway.smtp.limits import SharedLimits
from tests.conftest import Gateway, wait_for


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sorted(int(child) for child in found)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def fork_tree(gateway: Gateway, workers: int = 2) -> tuple[int, list[int]] | None:
    """(the fork server's pid, its workers' pids) once all ``workers`` run, else None."""
    assert gateway.proc is not None
    servers = [pid for pid in children(gateway.proc.pid) if comm(pid) == "sesmail-forks"]
    if len(servers) != 1:
        return None
    forked = children(servers[0])
    return (servers[0], forked) if len(forked) == workers else None


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie counts as gone)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def send(port: int, count: int, subject: str) -> None:
    for n in range(count):  # new connections spread over the workers
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            refused = smtp.sendmail("s@sender.test", ["bob@example.test"],
                                    f"From: s@sender.test\r\nSubject: {subject} {n}\r\n\r\nbody\r\n")
            assert refused == {}


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
    tree = wait_for(lambda: fork_tree(gateway))
    os.kill(tree[1][0], signal.SIGKILL)
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


def test_04_no_worker_nor_fork_server_outlives_a_killed_main_process(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"smtp": {"workers": 2}})
    server, workers = wait_for(lambda: fork_tree(gateway))
    gateway.kill()  # kill -9 the main process only

    wait_for(lambda: not alive([server, *workers]), timeout=20)
    refused = socket.socket()
    assert refused.connect_ex(("127.0.0.1", gateway.port)) != 0  # nobody left on the port
    refused.close()


def test_05_workers_come_from_one_fork_server_that_holds_nothing_open_and_replaces_a_killed_worker(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway({"smtp": {"workers": 2}})
    server, workers = wait_for(lambda: fork_tree(gateway))
    assert [comm(pid) for pid in workers] == ["sesmail-smtp-0", "sesmail-smtp-1"]
    # Forked before the daemon locked its data dir or opened anything in it: a server left behind
    # could not keep the lock, the spool or the rules open.
    opened = [os.readlink(fd) for fd in Path(f"/proc/{server}/fd").iterdir()]
    assert not [path for path in opened if path.startswith(str(gateway.data_dir))], opened
    send(gateway.port, 6, "before")
    gateway.wait_delivered(6)

    os.kill(workers[0], signal.SIGKILL)
    tree = wait_for(lambda: (t := fork_tree(gateway)) and workers[0] not in t[1] and t, timeout=20)
    assert tree[0] == server and workers[1] in tree[1]  # the same server forked the replacement
    gateway.signal(signal.SIGHUP)  # forwarded to the workers: they reload, nobody dies
    wait_for(lambda: "reload:" in gateway.log())
    send(gateway.port, 6, "after")
    gateway.wait_delivered(12)
    assert fork_tree(gateway) == tree

    assert gateway.stop() == 0
    assert not alive([server, *tree[1]])


def test_06_a_killed_fork_server_stops_the_daemon_with_status_1_and_leaves_nothing_behind(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway({"smtp": {"workers": 2}})
    server, workers = wait_for(lambda: fork_tree(gateway))
    os.kill(server, signal.SIGKILL)  # the workers drain and exit; no new one can be forked

    assert gateway.proc is not None
    assert gateway.proc.wait(30) == 1  # systemd's Restart=on-failure starts it afresh
    assert "the fork server is gone" in gateway.log()
    assert not alive([server, *workers])


def test_07_a_second_daemon_on_the_same_data_dir_exits_2_and_its_fork_server_with_it(
    make_gateway: Callable[..., Gateway],
) -> None:
    first = make_gateway({"smtp": {"workers": 2}})
    second = make_gateway({"smtp": {"workers": 2}}, subdir="second", start=False)
    second.config.write_text(second.config.read_text().replace(str(second.data_dir), str(first.data_dir)))
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    lines = second.log().strip().splitlines()
    assert len(lines) == 1 and "is in use by another sesmail-gateway" in lines[0]

    def left_behind() -> list[str]:  # the fork server runs the daemon's command line
        return subprocess.run(["pgrep", "-f", str(second.config)], capture_output=True, text=True).stdout.split()

    wait_for(lambda: not left_behind())
    send(first.port, 2, "still here")
    first.wait_delivered(2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_08_a_signal_to_every_process_of_the_tree_is_handled_by_the_daemon(
    make_gateway: Callable[..., Gateway], signum: int,
) -> None:
    """systemd sends SIGTERM to every process of the unit, a terminal sends ^C to the whole process group."""
    gateway = make_gateway({"smtp": {"workers": 2}})
    server, workers = wait_for(lambda: fork_tree(gateway))
    assert gateway.proc is not None
    for pid in [gateway.proc.pid, server, *workers]:
        os.kill(pid, signum)
    if signum == signal.SIGHUP:  # a reload: nobody dies, mail still flows
        wait_for(lambda: "reload:" in gateway.log())
        send(gateway.port, 2, "after reload")
        gateway.wait_delivered(2)
        assert fork_tree(gateway) == (server, workers)
        return
    assert gateway.proc.wait(30) == 0
    assert not alive([server, *workers])
    assert "exited with" not in gateway.log()  # every worker ended by draining, none by the signal itself
    assert "Traceback" not in gateway.log()


def test_09_a_frozen_worker_is_killed_and_replaced_and_a_busy_one_is_not(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway({"smtp": {"workers": 2, "worker_timeout": 2}})
    server, workers = wait_for(lambda: fork_tree(gateway))
    send(gateway.port, 8, "before")
    gateway.wait_delivered(8)
    assert fork_tree(gateway) == (server, workers)

    os.kill(workers[0], signal.SIGSTOP)  # alive, but its event loop never runs again
    tree = wait_for(lambda: (t := fork_tree(gateway)) and workers[0] not in t[1] and t, timeout=30)
    # Worker 1 sat idle all that while (over worker_timeout): its heartbeats kept it.
    assert tree[0] == server and workers[1] in tree[1]
    assert "smtp worker 1" not in gateway.log()
    assert "smtp worker 0" in gateway.log() and "taken as frozen" in gateway.log()
    assert not alive([workers[0]])  # killed, not left stopped
    send(gateway.port, 6, "after")
    gateway.wait_delivered(14)
    assert gateway.stop() == 0


def test_10_concurrent_sessions_are_shared_evenly_between_the_workers(
    make_gateway: Callable[..., Gateway],
) -> None:
    """Twelve sessions held open at once end up six and six. With SO_REUSEPORT the kernel chose
    the worker by a hash of the client's port, and 20 benchmark sessions were split 16 to 4 (the
    one worker's CPU the limit, the other idle). The worker of a session is read from the pid in
    its queue id."""
    gateway = make_gateway({"smtp": {"workers": 2}})
    _server, workers = wait_for(lambda: fork_tree(gateway))
    sessions = []
    for _ in range(12):  # one after another, each greeted before the next connects
        smtp = smtplib.SMTP("127.0.0.1", gateway.port, timeout=10)
        smtp.ehlo("client.test")
        sessions.append(smtp)
    per_worker = {pid & 0xFFFFF: 0 for pid in workers}
    for n, smtp in enumerate(sessions):
        smtp.mail("s@sender.test")
        smtp.rcpt("bob@example.test")
        code, reply = smtp.data(f"From: s@sender.test\r\nSubject: {n}\r\n\r\nbody\r\n".encode())
        assert code == 250
        queue_id = reply.decode().rsplit(" ", 1)[-1]
        per_worker[int(queue_id[13:18], 16)] += 1
        smtp.quit()
    assert sorted(per_worker.values()) == [6, 6], per_worker
    gateway.wait_delivered(12)
    assert gateway.stop() == 0
