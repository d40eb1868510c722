"""The data dir's lock and control socket: one daemon per data dir, and how commands reach it.

A unix socket ``<data_dir>/control.sock``, owner only (mode 0600, in a
folder the daemon owns). One JSON request line, one JSON answer line.
Commands: ``reload-tokens`` (re-read the token store now). A command with
no daemon listening gets None back and works on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sesmail_gateway.config import ConfigError

SOCKET_NAME = "control.sock"
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(self, data_dir: Path, handlers: dict[str, Handler]) -> None:
        self.path = data_dir / SOCKET_NAME
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a daemon that died
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10.0):
                line = await reader.readline()
            try:
                request = json.loads(line)
                handler = self.handlers.get(str(request.get("command")))
            except (ValueError, AttributeError):
                request, handler = {}, None
            if handler is None:
                answer: dict[str, Any] = {"ok": False, "error": "unknown command"}
            else:
                answer = await handler(request)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def send(data_dir: Path, command: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any] | None:
    """Ask the running daemon; None when none is listening."""
    path = data_dir / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        sock.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data or b"{}")
    return answer if isinstance(answer, dict) else None


LOCK_NAME = "gateway.lock"


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for the daemon's life; ConfigError (exit 2) if another has it."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"gateway.data_dir: {data_dir} is in use by another sesmail-gateway (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
