"""The local side: the on-demand local controller, the example pipeline, and cpu shares."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobnest
from jobnest._client import local_controller_healthy

from .conftest import Running, wait_for

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


# `make test` runs as root (it starts Docker's daemon and PostgreSQL), where a controller confines
# local jobs and gives each run a cgroup: where it cannot, these tests fail rather than skip.
AS_ROOT = "local jobs are confined, and runs get cgroups, by a controller running as root, as make test runs"

SANDBOX_PROBE = """
import os, socket, sys
home, store, controller_pid, stored, given = sys.argv[1:6]
def connects(path):
    try:
        socket.socket(socket.AF_UNIX).connect(path)
        return "open"
    except OSError as e:
        return type(e).__name__
def reads(path):
    try:
        open(path, "rb").read(1)
        return "read"
    except OSError as e:
        return type(e).__name__
def writes(path):
    try:
        with open(path, "a") as f:
            f.write("poison")
        return "wrote"
    except OSError as e:
        return type(e).__name__
def chmods(path):
    try:
        os.chmod(path, 0o666)
        return "changed"
    except OSError as e:
        return type(e).__name__
print("owner-socket", connects(os.path.join(home, "controller.sock")))
print("docker-socket", connects("/var/run/docker.sock"))
print("store", reads(store))
print("home", sorted(os.listdir(home)))
print("runs", os.listdir(os.path.join(home, "runs")) == [os.environ["JOBNEST_RUN"]])
print("input-append", writes(given), "input-chmod", chmods(given))
print("blob", reads(os.path.join(home, "data", "blobs", stored[:2], stored)))
print("environ", reads(f"/proc/{controller_pid}/environ"), "root", reads(f"/proc/{controller_pid}/root/{store}"))
import jobnest
print("child", jobnest.connect().submit(["true"], name="child").wait(timeout=30).state)
"""


@pytest.mark.parametrize("confined_by", ["helper", "shell"])
def test_a_local_job_reaches_none_of_the_controller_s_own_files_and_cannot_change_its_inputs(
        running: Running, tmp_path: Path, confined_by: str) -> None:
    """Before, a local job opened the owner's socket (admin without a token), read the store and
    other runs, appended to its input (the stored blob) and read the controller's environment.
    The sandbox helper (`make test` builds it) and the shell that stands in for it confine alike."""
    sandbox = running.controller.executors["local"].sandbox  # type: ignore[attr-defined]
    assert sandbox.available, AS_ROOT
    assert sandbox.helper, "no sandbox helper: run `make sandbox` (make test does)"
    if confined_by == "shell":
        sandbox.helper = ""
    home = Path(running.controller.settings.home)
    (tmp_path / "in.txt").write_text("original")
    client = running.client()
    stored = hashlib.sha256(b"original").hexdigest()
    other = client.submit(["sh", "-c", "echo private > {output}/x"], name="other").wait(timeout=30)
    job = client.submit([sys.executable, "-c", SANDBOX_PROBE, str(home), str(home / "jobnest.db"), str(os.getpid()),
                         stored, "{inputs.i}"], inputs={"i": jobnest.upload(tmp_path / "in.txt")})
    job.wait(timeout=60)
    assert job.state == "succeeded", job.logs(stream=None)
    seen = dict(line.split(" ", 1) for line in job.logs().splitlines())
    assert seen == {"owner-socket": "FileNotFoundError", "docker-socket": "ConnectionRefusedError",
                    "store": "FileNotFoundError", "home": "['data', 'jobs', 'runs']", "runs": "True",
                    "input-append": "PermissionError input-chmod OSError", "blob": "FileNotFoundError",
                    "environ": "PermissionError root PermissionError", "child": "succeeded"}, job.logs(stream=None)
    assert (home / "data" / "blobs" / stored[:2] / stored).read_bytes() == b"original"
    assert client.upload(tmp_path / "in.txt").digest  # the stored bytes are whole
    with pytest.raises(jobnest.PermissionDenied, match=r"jobs\[0\]\.cwd: .* the controller's own"):
        client.submit(["cat", "x"], cwd=other.info.output_dir)  # another run's folder


def test_a_process_that_leaves_its_job_s_session_ends_with_the_job(running: Running, tmp_path: Path) -> None:
    """Before, `setsid` took a process out of the job's process group, and it outlived the job's
    end and its cancel. Its run's cgroup holds it still."""
    limiter = running.controller.executors["local"].limiter  # type: ignore[attr-defined]
    assert limiter.available, AS_ROOT
    client = running.client()
    escaped = lambda name: f"setsid sh -c 'echo $$ > {tmp_path / name}; exec sleep 300' & sleep 0.5"  # noqa: E731
    ended = client.submit(["sh", "-c", escaped("ended")], cpu=0.1).wait(timeout=30)
    cancelled = client.submit(["sh", "-c", escaped("cancelled") + "; sleep 300"], cpu=0.1)
    wait_for(lambda: (tmp_path / "cancelled").exists())
    cancelled.cancel()
    cancelled.wait(timeout=30)
    for name in ("ended", "cancelled"):
        pid = int((tmp_path / name).read_text())
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
                 timeout=20)
    assert ended.state == "succeeded" and cancelled.state == "cancelled"


def test_a_fork_bomb_stays_within_its_run_s_process_cap(running: Running) -> None:
    limiter = running.controller.executors["local"].limiter  # type: ignore[attr-defined]
    assert limiter.available, AS_ROOT
    limiter.max_pids = 20
    job = running.client().submit(["sh", "-c", "for i in $(seq 40); do sleep 3 & done; wait"], cpu=0.1)
    assert job.wait(timeout=60).state == "failed"
    assert "fork" in job.logs(stream="stderr").lower()
