"""examples/park_fit.py as a test, on local processes, in containers and on Slurm: a failing reduction
cancels fetch and fit, and the fixed rerun reuses upload and model."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jobnest

from .conftest import ADMIN, JOBNEST_IMAGE, Running

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "park_fit.py"


def run_example(running: Running, options: dict[str, Any], *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                                 dict[str, jobnest.JobInfo]]:
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    if options:  # the executor under test; in containers, the jobnest image, which has python3
        env["JOBNEST_EXECUTOR"] = options["executor"]
        if options.get("image"):
            env["JOBNEST_IMAGE"] = JOBNEST_IMAGE
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], env=env, capture_output=True, text=True, timeout=300)
    client = running.client()
    [driver] = [j for j in client.list(roots=True)][-1:]
    return done, {j.name: j for j in client.list(parent=driver.uuid)}


def test_a_failing_reduction_cancels_fetch_and_fit_and_the_fix_reuses_the_rest(
        where: tuple[Running, dict[str, Any]]) -> None:
    running, options = where
    broken, steps = run_example(running, options, "--broken")
    assert broken.returncode != 0, broken.stdout + broken.stderr
    assert {name: j.state for name, j in steps.items()} == {
        "reduction": "failed", "fetch": "cancelled", "upload": "succeeded", "model": "succeeded", "fit": "cancelled"}
    reduction, fetch = steps["reduction"].uuid[:8], steps["fetch"].uuid[:8]
    assert f"job reduction ({reduction}) failed: exit code 1: reduction: only 30 points" in steps["fetch"].reason
    assert f"job fetch ({fetch}) cancelled; root cause: job reduction ({reduction}) failed" in steps["fit"].reason
    assert "fewer than --min-points" in running.client().job(steps["reduction"].uuid).logs(stream="stderr")

    fixed, steps = run_example(running, options)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert {name for name, j in steps.items() if j.reused} == {"upload", "model"}
    assert {j.state for j in steps.values()} == {"succeeded"}
    fit = running.client().job(steps["fit"].uuid).result()
    assert abs(fit["slope"] - 2.5) < 0.05 and abs(fit["intercept"] - 1.0) < 0.2
    assert "4 ran, 2 reused" in fixed.stdout

    again, steps = run_example(running, options)
    assert again.returncode == 0 and all(j.reused for j in steps.values())


def test_park_fit_runs_as_a_runner_in_a_container(docker_running: Running) -> None:
    """`jobnest submit --executor docker ... examples/park_fit.py`: the driver itself is a job in a
    container, and its uploads go through the jobs' socket with its job token."""
    env = {**os.environ, "JOBNEST_CONTROLLER": docker_running.address, "JOBNEST_TOKEN": ADMIN}
    result = subprocess.run(
        [sys.executable, "-c", "from jobnest._cli import main; main()", "submit", "--wait", "--executor", "docker",
         "--image", JOBNEST_IMAGE, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    runner = result.stdout.split()[0]
    steps = {j.name: j for j in docker_running.client().list(parent=runner)}
    assert set(steps) == {"reduction", "fetch", "upload", "model", "fit"}
    assert {j.executor for j in steps.values()} == {"docker"}
    assert docker_running.client().job(steps["fit"].uuid).result()["model"] == "line"
