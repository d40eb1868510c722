"""Fixtures for the power-loss tests: a real FUSE mount of fusefs.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.powerloss.harness import PowerLossFS, fuse_available


@pytest.fixture
def powerfs(tmp_path: Path) -> Iterator[PowerLossFS]:
    """A mounted power-loss filesystem (the test fails, not skips, where FUSE is missing: .ci/run installs it)."""
    missing = fuse_available()
    if missing:
        pytest.fail(f"the power-loss filesystem needs FUSE: {missing}")
    fs = PowerLossFS(tmp_path / "fs").mount()
    yield fs
    fs.close()
