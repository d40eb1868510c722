"""The Ansible role: syntax, ansible-lint (production profile), and a real run.

The real run applies the role with `ansible-playbook -c local` into a temporary
root, skipping by tag only what needs root on this machine, the network or a
running systemd (packages, system, tls, cloudwatch, service). It runs twice: the
second run changes nothing. The gateway it installed then starts from its venv
with the rendered config under a real NOTIFY_SOCKET and accepts a message.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import smtplib
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_for
from tests.dnsserver import TestDNSServer

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
TOOLS = ROOT / ".venv-tools" / "bin"
ROLE = ANSIBLE / "roles" / "sesmail_gateway"
SKIPPED_TAGS = "packages,system,tls,cloudwatch,service"


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{name} is installed into .venv-tools by `make .venv-tools/.installed`"
    return str(path)


def ansible_env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": "/tmp/.ansible-local", "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible-remote",
            "PATH": f"{TOOLS}:{os.environ['PATH']}"}


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ANSIBLE, env=ansible_env(),
                            timeout=600, check=False, **kwargs)
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def test_playbook_syntax() -> None:
    run([tool("ansible-playbook"), "--syntax-check", "-i", "inventory.example.yml", "site.yml"])


def test_ansible_lint_production_profile() -> None:
    result = run([tool("ansible-lint"), "--offline", "--profile", "production", "site.yml"])
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def render(template: str, variables: dict[str, Any], tmp: Path) -> str:
    """One role template rendered by Ansible itself with the role's defaults and vars."""
    dest = tmp / Path(template).stem
    extra = tmp / "extra.json"
    extra.write_text(json.dumps(variables))
    run([tool("ansible"), "localhost", "-c", "local", "-i", "localhost,", "-m", "ansible.builtin.template",
         "-a", f"src={ROLE / 'templates' / template} dest={dest} mode=0600",
         "-e", f"ansible_python_interpreter={TOOLS / 'python'}",
         "-e", f"@{ROLE / 'defaults' / 'main.yml'}", "-e", f"@{ROLE / 'vars' / 'main.yml'}", "-e", f"@{extra}"])
    return dest.read_text()


def test_unit_template_with_defaults_is_the_shipped_unit(tmp_path: Path) -> None:
    rendered = render("sesmail-gateway.service.j2", {"inventory_hostname": "mx1.example.com"}, tmp_path)
    assert rendered.split("\n", 1)[1] == (ROOT / "systemd" / "sesmail-gateway.service").read_text()


def test_every_key_of_the_example_config_is_reachable(tmp_path: Path) -> None:
    example = tomllib.loads((ROOT / "config" / "gateway.example.toml").read_text())
    rendered = tomllib.loads(render("gateway.toml.j2", {"sesmail_gateway_config": example}, tmp_path))
    assert rendered == example


# --- The role applied for real ---------------------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        try:
            while True:
                self.messages += self.sock.recv(4096).decode().split("\n")
        except (TimeoutError, BlockingIOError):
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def dns() -> Iterator[TestDNSServer]:
    server = TestDNSServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory, dns: TestDNSServer) -> dict[str, Any]:
    """The role applied twice into a temporary root; what the runs printed and where things are."""
    tmp = tmp_path_factory.mktemp("ansible")
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("sesmail_gateway-*.whl"))
    root = tmp / "root"
    port, metrics_port = free_port(), free_port()
    variables = {
        "sesmail_gateway_root": str(root),
        "sesmail_gateway_user": pwd.getpwuid(os.getuid()).pw_name,
        "sesmail_gateway_group": grp.getgrgid(os.getgid()).gr_name,
        "sesmail_gateway_wheel": str(wheel),
        "sesmail_gateway_hostname": "mx1.example.test",
        "sesmail_gateway_domains": ["example.test"],
        "sesmail_gateway_smtp_listen": [f"127.0.0.1:{port}"],
        "sesmail_gateway_metrics_listen": f"127.0.0.1:{metrics_port}",
        "sesmail_gateway_config": {
            "smtp": {"workers": 1},
            "checks": {"dns_servers": [dns.address], "dns_timeout": 1.0, "dmarc": "monitor"},
        },
    }
    (tmp / "vars.json").write_text(json.dumps(variables))
    (tmp / "inventory.yml").write_text(json.dumps({"sesmail_gateways": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": str(TOOLS / "python")}}}}))
    argv = [tool("ansible-playbook"), "-i", str(tmp / "inventory.yml"), "site.yml", "-e", f"@{tmp / 'vars.json'}",
            "--skip-tags", SKIPPED_TAGS, "-e", "ansible_become=false"]
    first = run(argv)
    second = run(argv)
    return {"root": root, "port": port, "first": first.stdout, "second": second.stdout, "tmp": tmp}


def recap(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("localhost") and "ok=" in line)
    return {key: int(value) for key, value in (part.split("=") for part in line.split(":", 1)[1].split())}


@pytest.mark.slow
def test_role_run_is_idempotent(applied: dict[str, Any]) -> None:
    assert recap(applied["first"])["changed"] > 0 and recap(applied["first"])["failed"] == 0
    assert recap(applied["second"])["changed"] == 0, applied["second"][-3000:]


@pytest.mark.slow
def test_role_wrote_venv_config_and_unit(applied: dict[str, Any]) -> None:
    root: Path = applied["root"]
    assert (root / "opt/sesmail-gateway/venv/bin/sesmail-gateway").exists()
    config = root / "etc/sesmail-gateway/gateway.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert tomllib.loads(config.read_text())["gateway"]["domains"] == ["example.test"]
    unit = (root / "etc/systemd/system/sesmail-gateway.service").read_text()
    assert f"ExecStart={root}/opt/sesmail-gateway/venv/bin/sesmail-gateway serve" in unit
    assert (root / "etc/systemd/journald.conf.d/sesmail-gateway.conf").exists()


@pytest.mark.slow
def test_rendered_unit_passes_systemd_analyze_verify(applied: dict[str, Any]) -> None:
    unit = applied["root"] / "etc/systemd/system/sesmail-gateway.service"
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_installed_gateway_notifies_systemd_and_accepts_a_message(applied: dict[str, Any]) -> None:
    root: Path = applied["root"]
    venv_bin = root / "opt/sesmail-gateway/venv/bin"
    config = root / "etc/sesmail-gateway/gateway.toml"
    env = {**os.environ, "SESMAIL_GATEWAY_CONFIG": str(config)}
    subprocess.run([str(venv_bin / "sesmail-gateway"), "routes", "add", "*@example.test", "--action", "maildir",
                    "--target", "inbox"], check=True, env=env, capture_output=True, timeout=60)

    notify = NotifySocket(applied["tmp"] / "notify.sock")
    env |= {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    log = (applied["tmp"] / "gateway.log").open("wb")
    proc = subprocess.Popen([str(venv_bin / "sesmail-gateway"), "serve"], env=env, stdout=log, stderr=log)
    try:
        wait_for(lambda: "READY=1" in notify.poll() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, (applied["tmp"] / "gateway.log").read_text()
        # READY=1 comes after the listener is up: the port answers at once.
        with socket.create_connection(("127.0.0.1", applied["port"]), timeout=5) as sock:
            assert sock.recv(512).startswith(b"220 ")

        message = EmailMessage()
        message["From"] = "sender@elsewhere.test"
        message["To"] = "someone@example.test"
        message["Subject"] = "installed by ansible"
        message.set_content("hello\n")
        with smtplib.SMTP("127.0.0.1", applied["port"], timeout=30) as client:
            client.send_message(message)
        inbox = root / "var/lib/sesmail-gateway/inbox/new"
        delivered = wait_for(lambda: list(inbox.glob("*")) if inbox.exists() else [], timeout=30)
        assert b"installed by ansible" in delivered[0].read_bytes()
        wait_for(lambda: "WATCHDOG=1" in notify.poll(), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        notify.close()
        log.close()
    assert proc.returncode == 0
