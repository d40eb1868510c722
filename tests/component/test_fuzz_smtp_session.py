"""A bounded coverage-guided fuzz run of the SMTP session (atheris / libFuzzer).

The target (benchmarks/fuzz_smtp_session.py) feeds raw client bytes to a real
gateway session over TCP in its own process; this test runs it for
``FUZZ_SECONDS`` and requires 0 crashes, 0 hangs and a server that still
answers. The README says how to run it for longer.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

FUZZ_SECONDS = 60


@pytest.mark.slow
@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_fuzzing_the_session_finds_no_crash_and_no_hang(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_smtp_session.py"), f"-max_total_time={FUZZ_SECONDS}",
         "-timeout=20", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, cwd=ROOT, timeout=FUZZ_SECONDS + 90,
    )
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and not crashes, f"{crashes}\n{output[-4000:]}"
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done, output[-2000:]
    runs = int(done.group(1))
    print(f"fuzz: {runs} inputs in {done.group(2)} s, 0 crashes, corpus {len(list(corpus.iterdir()))} inputs")
    assert runs >= 1000  # every 500th input also checked that a plain session is still served
