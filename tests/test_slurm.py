"""The Slurm executor on a real one-node Slurm cluster (slurmctld, slurmd and munged started by
the tests, see tests/slurm.py): whole-core runs as Slurm jobs, smaller ones packed into blocks
with their own shares, one status query per pass, a controller restart, Slurm down and back,
and a runner whose nest runs on Slurm. The executor contract tests (`where`) run here too."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

import jobnest
from jobnest_controller.app import Controller
from jobnest_controller.executors.slurm import POLL
from jobnest_controller.store import runs

from . import slurm
from .conftest import ADMIN, Running, slurm_settings, wait_for

BUSY = ["python3", "-c", "import time\nend = time.time() + 2\nwhile time.time() < end: pass\n"
                         "print(round(time.process_time() / 2, 3))"]


def test_four_quarter_core_runs_share_one_cpu_each_with_its_share(slurm_running: Running) -> None:
    """Slurm allocates whole CPUs: without blocks each would hold a CPU of its own."""
    client = slurm_running.client()
    jobs = [client.submit(BUSY, name=f"quarter-{i}", cpu=0.25, executor="slurm", reuse=False) for i in range(4)]
    client.wait([j.uuid for j in jobs], timeout=120)
    infos = [client.get(j.uuid) for j in jobs]
    assert {i.state for i in infos} == {"succeeded"}, [i.reason for i in infos]
    assert max(i.started_at for i in infos) < min(i.finished_at for i in infos)  # all four at once
    assert len(slurm_running.controller.executors["slurm"].blocks) == 1  # in one Slurm job of one CPU
    shares = [float(client.job(j.uuid).logs()) for j in jobs]
    assert all(0.15 <= share <= 0.35 for share in shares), f"0.25 shares used {shares} of a core"
    [first] = slurm_running.controller.executors["slurm"].blocks
    time.sleep(slurm_running.controller.settings.slurm.block_idle + 1)  # it gives its CPU back
    assert client.submit(["true"], cpu=0.25, executor="slurm").wait(timeout=60).state == "succeeded"
    assert first not in slurm_running.controller.executors["slurm"].blocks  # ended and empty: forgotten


def test_a_whole_core_run_is_a_slurm_job_of_its_own(slurm_running: Running) -> None:
    client = slurm_running.client()
    job = client.submit(["sh", "-c", "echo $SLURM_CPUS_PER_TASK $JOBNEST_RUN; pwd; echo oops >&2; exit 3"], cpu=1.5,
                        executor="slurm").wait(timeout=60)
    assert job.state == "failed" and job.exit_code == 3 and job.info.reason == "exit code 3: oops"
    # its cpu share rounded up to whole CPUs, its own variables and folder
    assert job.logs() == f"2 {job.info.run_uuid}\n{job.info.output_dir}\n"


def test_whole_core_runs_started_together_go_as_one_job_array(slurm_running: Running) -> None:
    client = slurm_running.client()
    executor = slurm_running.controller.executors["slurm"]
    jobs = client.map(["sh", "-c", "echo {item} $SLURM_ARRAY_TASK_ID"], range(2), cpu=1, executor="slurm")
    client.wait([j.uuid for j in jobs], timeout=60)
    assert [j.state for j in jobs] == ["succeeded"] * 2
    tasks = {int(client.job(j.uuid).logs().split()[1]) for j in jobs}
    assert tasks == {0, 1} and executor.submits == 1  # one sbatch for both, a task each


def test_status_is_one_query_per_pass_whatever_the_number_of_jobs(slurm_running: Running) -> None:
    client = slurm_running.client()
    executor = slurm_running.controller.executors["slurm"]
    before, started = executor.queries, time.monotonic()
    jobs = [*client.map(["sh", "-c", "echo {item}"], range(60), cpu=0.1, executor="slurm", reuse=False),
            *client.map(["sh", "-c", "echo whole {item}"], range(4), cpu=1, executor="slurm", reuse=False)]
    client.wait([j.uuid for j in jobs], timeout=180)
    asked, seconds = executor.queries - before, time.monotonic() - started
    assert {j.state for j in jobs} == {"succeeded"}
    assert asked <= seconds / POLL + 2, f"{asked} queries in {seconds:.1f} s"  # at most one per POLL seconds
    assert asked < len(jobs), f"{asked} queries for {len(jobs)} jobs"


def test_an_image_is_refused_on_slurm(slurm_running: Running) -> None:
    try:
        slurm_running.client().submit(["true"], executor="slurm", image="debian:bookworm")
    except jobnest.InvalidSpec as e:
        assert e.field == "jobs[0].image" and "in no image" in str(e)
    else:
        raise AssertionError("an image was accepted on Slurm")


def test_runs_go_on_across_a_controller_restart(tmp_path: Path, slurm_conf: Path) -> None:
    """Slurm jobs and blocks outlive the controller; the next one finds how they ended, a job
    whose start it never stored too (by the handle the executor left in its work dir)."""
    settings = slurm_settings(tmp_path / "home", slurm_conf)
    first = Controller(settings)
    first.start()
    client = Running(first).client()
    script = 'sleep 6; echo "$1 done"; exit {code}'
    whole = client.submit(["sh", "-c", script.format(code=4), "sh", "whole"], cpu=1, executor="slurm")
    part = client.submit(["sh", "-c", script.format(code=0), "sh", "part"], cpu=0.5, executor="slurm")
    wait_for(lambda: all(Path(client.get(j.uuid).output_dir).parent.joinpath("pid.1").exists() for j in (whole, part)),
             timeout=60)
    run_uuid = client.get(whole.uuid).run_uuid
    first.stop(grace=0)
    with sa.create_engine(settings.store.url).begin() as conn:  # as if killed before it stored that start
        conn.execute(sa.update(runs).where(runs.c.uuid == run_uuid).values(handle=""))
    second = Controller(settings)
    second.start()
    try:
        client = Running(second).client()
        assert client.job(whole.uuid).wait(timeout=60).info.exit_code == 4
        assert second.executors["slurm"].submits == 0  # neither was submitted again
        assert client.job(part.uuid).wait(timeout=60).state == "succeeded"
        assert client.job(part.uuid).logs() == "part done\n"
    finally:
        second.stop(grace=0)
        slurm.cancel_all(slurm_conf)


def test_a_slurm_that_is_down_leaves_runs_queued_until_it_is_back(tmp_path: Path, slurm_conf: Path) -> None:
    slurm.stop_controller(slurm_conf)
    try:
        controller = Controller(slurm_settings(tmp_path / "home", slurm_conf))
        controller.start()
        client = Running(controller).client()
        job = client.submit(["echo", "back"], cpu=1, executor="slurm")
        wait_for(lambda: "Slurm does not answer" in client.get(job.uuid).reason, timeout=30)
        assert client.get(job.uuid).state == "queued"
    finally:
        slurm.start_controller(slurm_conf)
    try:
        assert job.wait(timeout=90).state == "succeeded" and job.logs() == "back\n"
    finally:
        controller.stop(grace=0)


def test_a_partition_without_nodes_says_so(tmp_path: Path, slurm_conf: Path) -> None:
    settings = slurm_settings(tmp_path / "home", slurm_conf)
    settings.slurm.partition = "nosuch"
    controller = Controller(settings)
    controller.start()
    try:
        client = Running(controller).client()
        job = client.submit(["true"], executor="slurm")
        wait_for(lambda: "partition 'nosuch' has no node" in client.get(job.uuid).reason, timeout=30)
    finally:
        controller.stop(grace=0)


def test_a_runner_on_slurm_nests_slurm_jobs(slurm_running: Running) -> None:
    """`jobnest submit --executor slurm examples/pipeline.py runner`: the runner and its children,
    submitted with its job token, and theirs, all run on Slurm."""
    example = Path(__file__).resolve().parent.parent / "examples" / "pipeline.py"
    env = {**os.environ, "JOBNEST_CONTROLLER": slurm_running.address, "JOBNEST_TOKEN": ADMIN}
    done = subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", "submit", "--wait",
                           "--executor", "slurm", str(example), "runner"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runner = done.stdout.split()[0]
    jobs = list(slurm_running.client().list(subtree=runner))
    assert len(jobs) == 6 and {j.executor for j in jobs} == {"slurm"} and {j.state for j in jobs} == {"succeeded"}
    assert "call-chr1" in done.stdout and "└─✔ call-chr2" in done.stdout  # the tree shows the nest


def test_a_run_over_its_memory_is_out_of_memory_and_retried_with_more(slurm_running: Running) -> None:
    """Slurm enforces `--mem` (cgroups, as the test cluster is set up): the run's reason says out
    of memory, and `memory_on_oom` gives the next attempt more."""
    client = slurm_running.client()
    grab = ["python3", "-c", "import os\nsize = int(os.environ['MIB']) * 2**20\nx = bytearray(size)\n"
                             "x[::4096] = b'x' * (size // 4096)\nprint('held', len(x) // 2**20)"]
    job = client.submit(grab, cpu=1, memory="150Mi", memory_on_oom=3.0, retries=1, env={"MIB": "300"},
                        executor="slurm").wait(timeout=120)
    assert job.state == "succeeded", job.info.reason
    assert [a["reason"] for a in job.info.attempts] == ["out of memory", "exit code 0"]
    assert [a["memory"] for a in job.info.attempts] == [150 * 2**20, 450 * 2**20] and job.logs() == "held 300\n"


def test_a_run_its_block_cannot_start_fails_saying_why_and_the_block_goes_on(slurm_running: Running,
                                                                             tmp_path: Path) -> None:
    client = slurm_running.client()
    nowhere = client.submit(["true"], cwd=str(tmp_path / "gone"), cpu=0.25, executor="slurm").wait(timeout=60)
    assert nowhere.state == "failed" and "its block could not start it" in nowhere.info.reason
    assert "gone" in nowhere.info.reason
    fine = client.submit(["echo", "fine"], cpu=0.25, executor="slurm").wait(timeout=60)
    assert fine.state == "succeeded" and fine.logs() == "fine\n"


def test_a_node_that_does_not_see_the_shared_folders_fails_the_run_saying_so(slurm_running: Running,
                                                                           slurm_conf: Path) -> None:
    """Slurm's nodes must share the controller's file system. A node that does not see a job's
    folder (here: removed while Slurm held the job) ends it at once, and the run fails saying so."""
    client = slurm_running.client()
    root = slurm_running.controller.executors["slurm"].root
    with slurm.partition_down(slurm_conf):
        whole = client.submit(["echo", "whole"], cpu=1, executor="slurm")
        part = client.submit(["echo", "part"], cpu=0.25, executor="slurm")
        wait_for(lambda: all(Path(client.get(j.uuid).output_dir).parent.joinpath("handle").exists()
                             for j in (whole, part)), timeout=30)
        for folder in ("arrays", "blocks"):
            shutil.rmtree(root / folder)
    for job in (whole, part):
        assert job.wait(timeout=60).state == "failed"
        assert "Slurm's node does not see" in job.info.reason and "share the controller's file system" \
            in job.info.reason, job.info.reason
    again = client.submit(["echo", "seen"], cpu=0.25, executor="slurm").wait(timeout=60)
    assert again.state == "succeeded" and again.logs() == "seen\n"


def test_the_folders_of_ended_arrays_and_blocks_go(slurm_running: Running) -> None:
    """Their tickets hold the runs' tokens: they must not pile up for the controller's life."""
    client = slurm_running.client()
    executor = slurm_running.controller.executors["slurm"]
    jobs = [client.submit(["echo", "whole"], cpu=1, executor="slurm"),
            client.submit(["echo", "part"], cpu=0.25, executor="slurm")]
    wait_for(lambda: all(Path(client.get(j.uuid).output_dir).parent.joinpath("handle").exists() for j in jobs),
             timeout=30)
    old = [*executor.root.glob("arrays/*"), *executor.root.glob("blocks/*")]
    assert len(old) == 2
    assert all(job.wait(timeout=60).state == "succeeded" for job in jobs)
    deadline = time.monotonic() + 60
    while any(folder.exists() for folder in old):  # they go at the ends of later runs
        assert time.monotonic() < deadline, f"still there: {[f for f in old if f.exists()]}"
        assert client.submit(["true"], cpu=1, executor="slurm", reuse=False).wait(timeout=60).state == "succeeded"


def test_a_block_just_submitted_is_not_taken_for_one_that_ended(slurm_running: Running) -> None:
    """Before, a status asked just before a new block's sbatch did not list it, and the run in it
    was taken back and handed to yet another block, again and again."""
    client = slurm_running.client()
    executor = slurm_running.controller.executors["slurm"]
    before = executor.submits
    whole = client.submit(["sh", "-c", "sleep 2"], cpu=1, executor="slurm", reuse=False)
    part = client.submit(["sh", "-c", "sleep 2; echo in a block"], cpu=0.5, executor="slurm", reuse=False)
    assert part.wait(timeout=60).state == "succeeded" and part.logs() == "in a block\n"
    assert whole.wait(timeout=60).state == "succeeded"
    assert executor.submits - before == 2, f"{executor.submits - before} sbatch calls for an array task and a block"
