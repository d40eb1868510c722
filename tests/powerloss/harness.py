"""The test side of fusefs.py: mount, cut the power, roll back, mount again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FUSEFS = Path(__file__).resolve().with_name("fusefs.py")


def fuse_available() -> str:
    """Why this machine cannot mount the filesystem, or "" if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse: {exc}"
    return ""


class PowerLossFS:
    """A power-loss filesystem over ``<state>/root``, mounted at ``<state>/mnt``.

    ``cut()`` freezes it (every later operation fails with EIO, as a dead
    disk would); ``unmount()`` then rolls the backing folder back to what
    was durable and returns the summary; ``mount()`` boots it again.
    """

    def __init__(self, state: Path) -> None:
        self.state = state
        self.backing = state / "root"
        self.mountpoint = state / "mnt"
        self.control = state / "control.sock"
        self.log_path = state / "fusefs.log"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts = 0

    def mount(self) -> PowerLossFS:
        self.control.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(FUSEFS), str(self.state), str(self.mountpoint), str(self.control)],
                stdout=subprocess.PIPE, stderr=log,
            )
        deadline = time.monotonic() + 20
        while not (os.path.ismount(self.mountpoint) and self.control.exists()):
            if self.proc.poll() is not None:
                raise AssertionError(f"fusefs exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"fusefs did not mount within 20s: {self.log()}")
            time.sleep(0.02)
        self.mounts += 1
        return self

    def command(self, cmd: str, **fields: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.control))
            sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        result: dict[str, Any] = json.loads(answer)
        return result

    def cut(self) -> None:
        """The power goes: nothing more reaches the disk."""
        self.command("cut")

    def fail_fsync(self, pattern: str, count: int = 1) -> None:
        """The next ``count`` fsyncs of paths matching ``pattern`` fail with EIO (-1: all of them)."""
        self.command("fail_fsync", pattern=pattern, count=count)

    def holders(self) -> list[int]:
        """Processes with a file or their working folder on the mount (a worker that outlived its daemon)."""
        mount = str(self.mountpoint)
        found: list[int] = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in (os.getpid(), self.proc.pid if self.proc else -1):
                continue
            try:
                links = [os.readlink(proc / "cwd")] + [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            except OSError:
                continue
            if any(link == mount or link.startswith(mount + "/") for link in links):
                found.append(int(proc.name))
        return found

    def mounted(self) -> bool:
        """Whether the mount is still there (from the mount table: a stat of a cut mount fails)."""
        mount = str(self.mountpoint)
        with open("/proc/self/mountinfo") as table:
            return any(line.split()[4] == mount for line in table)

    def unmount(self) -> dict[str, Any]:
        """Unmount; after a cut, the backing folder is rolled back. Returns the filesystem's summary."""
        assert self.proc is not None
        deadline = time.monotonic() + 20
        tool = shutil.which("fusermount3") or "fusermount"
        while True:
            for pid in self.holders():  # the power is off for them too (and for any still dying)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            done = subprocess.run([tool, "-u", str(self.mountpoint)], capture_output=True, text=True)
            # The mount table, not os.path.ismount: a stat of a cut mount fails, which ismount takes for "no".
            if done.returncode == 0 or not self.mounted():
                break
            if time.monotonic() > deadline:  # something still holds it open: detach it anyway
                subprocess.run([tool, "-u", "-z", str(self.mountpoint)], check=True)
                break
            time.sleep(0.05)
        out, _ = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            raise AssertionError(f"fusefs failed ({self.proc.returncode}): {self.log()}")
        self.proc = None
        lines = out.decode().strip().splitlines()
        report: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        return report

    def power_cut(self) -> dict[str, Any]:
        """Cut, unmount, roll back (the caller kills its processes between ``cut`` and this)."""
        self.cut()
        return self.unmount()

    def close(self) -> None:
        """Unmount at the end of a test, whatever state it is in (no rollback unless cut)."""
        if self.proc is None:
            return
        tool = shutil.which("fusermount3") or "fusermount"
        if subprocess.run([tool, "-u", str(self.mountpoint)], capture_output=True).returncode != 0:
            subprocess.run([tool, "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
