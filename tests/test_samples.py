"""examples/samples.py as a test: the broken sample's stderr and the root cause appear in the
driver's own output, and the fixed rerun's summary says which jobs ran."""

import os
import subprocess
import sys
from pathlib import Path

from .conftest import ADMIN, Running

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "samples.py"


def test_a_broken_sample_explains_itself_and_the_fix_reruns_only_it(running: Running) -> None:
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    run = lambda *args: subprocess.run([sys.executable, str(EXAMPLE), *args], env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=300)
    broken = run("--broken", "3")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    qc3 = next(line for line in broken.stdout.splitlines() if "✖ qc-3" in line)
    assert qc3.endswith("exit code 3: sample-3.fq: truncated, 3 lines")
    assert "merge cancelled: condition cannot hold: job align-3 (" in broken.stderr
    assert "root cause: job qc-3 (" in broken.stderr and "sample-3.fq: truncated, 3 lines" in broken.stderr
    assert "22 jobs: 20 ran (1 failed), 0 reused, 2 cancelled" in broken.stdout
    fixed = run()
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "22 jobs: 4 ran, 18 reused" in fixed.stdout and "merged 80 lines" in fixed.stdout
    ran = [line.split()[1] for line in fixed.stdout.splitlines()[1:] if "─✔" in line and "♻" not in line]
    assert ran == ["qc-3", "align-3", "merge"]
