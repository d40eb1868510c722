"""Every command-line failure is one line and a non-zero status; configuration problems are 2,
the status the systemd unit does not restart on."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_config


def config(tmp_path: Path, **smtp: Any) -> Path:
    return write_config(tmp_path / "gateway.toml", {
        "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(tmp_path / "data")},
        "smtp": {"listen": ["127.0.0.1:0"], "workers": 1, **smtp},
        "metrics": {"listen": ""},
    })


def one_line(stderr: str) -> str:
    """The one error line (the daemon's own JSON log lines aside)."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_queue_list_on_a_data_dir_that_is_not_a_folder_is_one_line(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "data").write_text("a file where the data folder should be")
    result = run_cli(path, "queue", "list", check=False)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith("sesmail-gateway: ")


def test_serve_with_a_data_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    path = config(tmp_path)
    (tmp_path / "data").write_text("not a folder")
    result = run_cli(path, "serve", check=False)
    assert result.returncode == 2
    assert "data" in one_line(result.stderr)


def test_serve_with_a_certificate_that_does_not_load_exits_2(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    path = config(tmp_path, tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "cert.pem"))
    result = run_cli(path, "serve", check=False)
    assert result.returncode == 2
    assert "smtp.tls_cert" in one_line(result.stderr)


def test_serve_on_an_address_not_on_this_host_exits_2(tmp_path: Path) -> None:
    result = run_cli(config(tmp_path, listen=["192.0.2.1:2525"]), "serve", check=False)
    assert result.returncode == 2
    assert "smtp.listen 192.0.2.1:2525" in one_line(result.stderr)


def test_serve_on_a_port_in_use_is_one_line_and_may_be_retried(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(config(tmp_path, listen=[f"127.0.0.1:{port}"]), "serve", check=False)
    assert result.returncode == 1  # another process holds it: a restart may succeed
    assert f"smtp.listen 127.0.0.1:{port}" in one_line(result.stderr)


@pytest.mark.parametrize("value", ['"5m"', '"300"', "300"])
def test_a_duration_for_the_command_timeout_is_accepted(tmp_path: Path, value: str) -> None:
    path = config(tmp_path)
    path.write_text(path.read_text().replace("workers = 1", f"workers = 1\ncommand_timeout = {value}"))
    assert run_cli(path, "queue", "list").stdout.strip() == "(none)"
