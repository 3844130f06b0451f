"""The local side: the on-demand local controller, the example pipeline, and cpu shares."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobnest
from jobnest._client import local_controller_healthy

from .conftest import Running

ROOT = Path(__file__).resolve().parent.parent


def stop_local(home: Path) -> None:
    subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", "--home", str(home), "down"],
                   check=True, capture_output=True, timeout=30)


def test_pipeline_example_runs_then_reuses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBNEST_")} | {"JOBNEST_HOME": str(home)}
    try:
        runs = [subprocess.run([sys.executable, str(ROOT / "examples/pipeline.py")], env=env, capture_output=True,
                               text=True, timeout=120) for _ in range(2)]
    finally:
        stop_local(home)
    first, second = (r.stdout for r in runs)
    assert runs[0].returncode == 0 and runs[1].returncode == 0, runs[0].stderr + runs[1].stderr
    assert "7 jobs: 7 ran, 0 reused" in first
    for name in ("pipeline", "align-a", "align-b", "call-variants", "call-chr1", "call-chr2"):
        assert f"✔ {name}" in first
    assert "    └─✔ call-chr2" in first  # three levels under the driver
    assert "7 jobs: 1 ran, 6 reused" in second
    assert "♻ reused run" in second


def test_local_controller_starts_on_demand_and_stops_when_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    for var in ("JOBNEST_CONTROLLER", "JOBNEST_TOKEN", "JOBNEST_JOB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("jobnest._client.LOCAL_IDLE_TIMEOUT", 1.0)
    client = jobnest.connect(home=str(home))
    job = client.submit(["echo", "local"], cpu=0.1).wait(timeout=30)
    assert job.logs() == "local\n"
    driver = client.driver
    assert driver is not None and job.info.spawned_by_job_uuid == driver.uuid
    assert oct((home / "controller.sock").stat().st_mode & 0o777) == "0o600"
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    client.finish()
    client.close()
    deadline = time.monotonic() + 20
    while local_controller_healthy(home / "controller.sock", timeout=0.5) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not local_controller_healthy(home / "controller.sock", timeout=0.5)


BUSY = "import time\nend = time.time() + 2\nwhile time.time() < end: pass\nprint(round(time.process_time() / 2, 3))\n"


def test_cpu_share_is_enforced_with_cgroups(running: Running, tmp_path: Path) -> None:
    limiter = running.controller.executors["local"].limiter  # type: ignore[attr-defined]
    assert limiter.available, "these machines let root create cgroups; the limiter should have found them"
    busy = tmp_path / "busy.py"
    busy.write_text(BUSY)
    job = running.client().submit([sys.executable, str(busy)], cpu=0.25).wait(timeout=30)
    assert job.info.cpu_enforced
    share = float(job.logs())
    assert 0.15 <= share <= 0.35, f"a 0.25 share got {share} of a core"
