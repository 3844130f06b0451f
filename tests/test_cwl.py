"""`jobnest-cwl` against a real controller: workflows run as real subprocesses, each step a real
jobnest job (local processes, or containers of the Docker executor), and a subset of the CWL
conformance tests (tests/cwl/conformance, see its README)."""

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

import jobnest

from .conftest import BUSYBOX, Running

HERE = Path(__file__).parent / "cwl"
TEXT = "pear\napple\nfig\n"


def run_cwl(running: Running, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobnest.cwl", "--outdir", str(cwd / "out"), *args],
                          cwd=cwd, env=running.env(), capture_output=True, text=True, timeout=timeout)


def workflow_here(tmp_path: Path) -> Path:
    """A copy of the test workflows in the test's own folder, with its --outdir beside them."""
    shutil.copytree(HERE, tmp_path / "wf", ignore=shutil.ignore_patterns("conformance"))
    return tmp_path / "wf"


def driver_of(client: jobnest.Client, name: str) -> jobnest.JobInfo:
    drivers = [j for j in client.list(roots=True) if j.name == name]
    assert len(drivers) == 1, drivers
    return drivers[0]


def check_outputs(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    assert Path(outputs["combined"]["path"]).read_text() == "APPLE\nFIG\nPEAR\n" + TEXT
    assert Path(outputs["greeting"]["path"]).read_text() == "hello from sorted.txt\n"
    return outputs


def test_workflow_steps_are_jobs_under_the_driver(running: Running, tmp_path: Path) -> None:
    wf = workflow_here(tmp_path)
    (tmp_path / "steps").mkdir()  # where each step's output is downloaded, then moved to out/
    check_outputs(run_cwl(running, "--tmp-outdir-prefix", f"{tmp_path}/steps/", "--preserve-entire-environment",
                          "wf.cwl", "job.yml", cwd=wf))
    assert list((tmp_path / "steps").iterdir()) == []
    client = running.client()
    driver = driver_of(client, "cwl wf.cwl")
    steps = {j.name: j for j in client.list(parent=driver.uuid)}
    assert set(steps) == {"upper", "sort", "combine"}
    assert all(j.state == "succeeded" and j.executor == "local" for j in steps.values())
    assert (steps["upper"].cpu, steps["upper"].memory) == (0.25, 100 * 2**20)
    assert (steps["sort"].cpu, steps["sort"].memory) == (0.5, 200 * 2**20)
    assert (steps["combine"].cpu, steps["combine"].memory) == (1.0, 256 * 2**20)  # cwltool's defaults
    assert client.get(steps["combine"].uuid).spec["env"]["GREETING"] == "hello from sorted.txt"
    assert not any(k.startswith("JOBNEST_") for j in steps.values() for k in client.get(j.uuid).spec["env"])
    assert driver.state == "succeeded"


def test_rerun_reuses_every_step(running: Running, tmp_path: Path) -> None:
    wf = workflow_here(tmp_path)
    check_outputs(run_cwl(running, "wf.cwl", "job.yml", cwd=wf))
    shutil.rmtree(wf / "out")
    again = run_cwl(running, "--parallel", "wf.cwl", "job.yml", cwd=wf)
    check_outputs(again)
    client = running.client()
    first, second = sorted((j for j in client.list(roots=True) if j.name == "cwl wf.cwl"), key=lambda j: j.created_at)
    steps = [j for j in client.list(parent=second.uuid) if j.spawned_by_job_uuid == second.uuid]
    assert len(steps) == 3 and all(j.reused for j in steps), steps
    assert again.stderr.count(", reused") == 3


def test_docker_steps(docker_running: Running, tmp_path: Path) -> None:
    wf = workflow_here(tmp_path)
    check_outputs(run_cwl(docker_running, "wf-docker.cwl", "job.yml", cwd=wf))
    client = docker_running.client()
    driver = driver_of(client, "cwl wf-docker.cwl")
    steps = {j.name: j for j in client.list(parent=driver.uuid)}
    assert set(steps) == {"upper", "sort", "combine"}
    assert all(j.executor == "docker" for j in steps.values())
    assert client.get(steps["sort"].uuid).spec["image"] == BUSYBOX
    assert (steps["sort"].cpu, steps["sort"].memory) == (0.5, 200 * 2**20)


def test_steps_on_slurm(slurm_running: Running, tmp_path: Path) -> None:
    wf = workflow_here(tmp_path)
    check_outputs(run_cwl(slurm_running, "--jobnest-executor", "slurm", "wf.cwl", "job.yml", cwd=wf))
    client = slurm_running.client()
    steps = list(client.list(parent=driver_of(client, "cwl wf.cwl").uuid))
    assert len(steps) == 3 and {j.executor for j in steps} == {"slurm"}


def test_failing_step(running: Running, tmp_path: Path) -> None:
    wf = workflow_here(tmp_path)
    done = run_cwl(running, "fail.cwl", "--sample", "S7", cwd=wf)
    assert done.returncode != 0
    assert "exit code 3" in done.stderr
    assert "no such sample: S7" in done.stderr
    [step] = running.client().list(parent=driver_of(running.client(), "cwl fail.cwl").uuid)
    assert (step.state, step.exit_code) == ("failed", 3)


def test_parallel_leaves_a_steps_size_to_the_controller(running: Running, tmp_path: Path) -> None:
    """With --parallel, cwltool's own check against this machine's cores is not the one that holds."""
    wf = workflow_here(tmp_path)
    (wf / "big.cwl").write_text((wf / "upper.cwl").read_text().replace("coresMin: 0.25", "coresMin: 100"))
    done = run_cwl(running, "--parallel", "big.cwl", "--text", "text.txt", cwd=wf)
    assert done.returncode != 0 and "100 cores is more than the largest node has" in done.stderr, done.stderr


def test_runner_as_a_job(running: Running, tmp_path: Path) -> None:
    """Run as a jobnest job itself (as `jobnest submit` runs a program), its steps are its children."""
    wf = workflow_here(tmp_path)
    client = running.client()
    runner = client.submit([sys.executable, "-m", "jobnest.cwl", "--outdir", str(wf / "out"), "wf.cwl",
                            "job.yml"], name="cwl-runner", cwd=str(wf))
    runner.wait(timeout=120)
    assert runner.state == "succeeded", runner.logs(stream="stderr")
    outputs = json.loads(runner.logs())
    assert Path(outputs["combined"]["path"]).read_text() == "APPLE\nFIG\nPEAR\n" + TEXT
    steps = {j.name: j for j in client.list(parent=runner.uuid)}
    assert set(steps) == {"upper", "sort", "combine"}


# -- the CWL conformance subset ----------------------------------------------------------------

CONFORMANCE = HERE / "conformance"


def matches(expected: Any, actual: Any) -> bool:
    """Whether a runner's output matches a conformance test's expectation, as cwltest compares:
    "Any" matches anything, a File or Directory's location and path by their ends, a Directory's
    listing in any order, and other keys of an expected object exactly (extra ones must be null)."""
    if expected == "Any":
        return actual is not None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        if expected.get("class") in ("File", "Directory"):
            for key, want in expected.items():
                if key in ("location", "path"):
                    got = unquote(str(actual.get(key) or actual.get("location", "")))
                    if want != "Any" and got != want and not got.endswith("/" + want):
                        return False
                elif key == "listing":
                    listing = list(actual.get("listing", []))
                    if len(listing) != len(want) or not all(any(matches(w, g) for g in listing) for w in want):
                        return False
                elif not matches(want, actual.get(key)):
                    return False
            return True
        return (all(matches(want, actual.get(key)) for key, want in expected.items())
                and all(actual[key] is None for key in set(actual) - set(expected)))
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(map(matches, expected, actual))
    if isinstance(expected, float) or isinstance(actual, float):
        return isinstance(actual, (int, float)) and abs(expected - actual) <= 1e-9 * max(abs(expected), 1)
    return bool(expected == actual)


def conformance_case(running: Running, case: dict[str, Any], tmp_path: Path) -> str:
    """"" if the runner passes one conformance test, else what went wrong."""
    out = tmp_path / case["id"]
    out.mkdir()
    args = ["--no-container", "--relax-path-checks", "--outdir", str(out / "out"), case["tool"],
            *([case["job"]] if case.get("job") else [])]
    done = subprocess.run([sys.executable, "-m", "jobnest.cwl", *args], cwd=CONFORMANCE, env=running.env(),
                          capture_output=True, text=True, timeout=120)
    if case.get("should_fail"):
        return "" if done.returncode != 0 else "it should have failed"
    if done.returncode != 0:
        return f"exit {done.returncode}: {done.stderr[-1500:]}"
    try:
        actual = json.loads(done.stdout)
    except ValueError:
        return f"not JSON: {done.stdout[-500:]!r}"
    return "" if matches(case["output"], actual) else f"expected {case['output']!r}, got {actual!r}"


def test_conformance_subset(running: Running, tmp_path: Path) -> None:
    cases = yaml.safe_load((CONFORMANCE / "conformance_tests.yaml").read_text())
    with ThreadPoolExecutor(8) as pool:
        found = pool.map(lambda c: conformance_case(running, c, tmp_path), cases)
        problems = dict(zip([c["id"] for c in cases], found))
    failed = {k: v for k, v in problems.items() if v}
    assert not failed, "\n\n".join(f"{k}: {v}" for k, v in failed.items())
    steps = list(running.client().list())
    assert sum(j.executor == "local" for j in steps) >= len(cases)  # the tools ran as jobs
