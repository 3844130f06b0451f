"""snakemake-executor-plugin-jobnest against a real controller: real `snakemake --executor jobnest`
runs in a subprocess, each rule instance a real jobnest job (local processes, or containers of the
Docker executor), plus Snakemake's own standard workflow tests run against the plugin."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake.common.tests import TestWorkflowsLocalStorageBase
from snakemake_executor_plugin_jobnest import ExecutorSettings

import jobnest

from .conftest import ADMIN, BUSYBOX, Running, wait_for

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 200

MANY = f"""
SAMPLES = [f"s{{i:03d}}" for i in range({SAMPLES})]

rule all:
    input: "all.txt"

rule one:
    output: "out/{{s}}.txt"
    threads: 2
    resources: mem_mb=50
    shell: "echo {{wildcards.s}} > {{output}}"

rule gather:
    input: expand("out/{{s}}.txt", s=SAMPLES)
    output: "all.txt"
    run:
        with open(output[0], "w") as f:
            for path in input:
                f.write(open(path).read())
"""


def snakemake(running: Running, folder: Path, *args: str, timeout: float = 180,
              wait: bool = True) -> "subprocess.CompletedProcess[str] | subprocess.Popen[str]":
    argv = [sys.executable, "-m", "snakemake", "--executor", "jobnest", *args]
    if not wait:
        return subprocess.Popen(argv, cwd=folder, env=running.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(argv, cwd=folder, env=running.env(), capture_output=True, text=True, timeout=timeout)


def workflow(folder: Path, snakefile: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Snakefile").write_text(snakefile)
    return folder


def runs_of(client: jobnest.Client, folder: Path) -> list[jobnest.JobInfo]:
    return [j for j in client.list(roots=True) if j.name == f"snakemake:{folder.name}"]


def test_200_samples_run_as_one_tree_with_their_cores_and_memory(running: Running, tmp_path: Path) -> None:
    folder = workflow(tmp_path / "many", MANY)
    done = snakemake(running, folder, "-j", "250", "--jobnest-cpu-per-thread", "0.25",
                     "--max-jobs-per-timespan", "1000/1s")  # Snakemake's default is 100 a second
    assert done.returncode == 0, done.stderr
    assert (folder / "all.txt").read_text().split() == [f"s{i:03d}" for i in range(SAMPLES)]
    client = running.client()
    [run] = runs_of(client, folder)
    jobs = list(client.list(parent=run.uuid))
    ones = [j for j in jobs if j.name.startswith("one[")]
    assert len(ones) == SAMPLES and len(jobs) == SAMPLES + 1, [j.name for j in jobs]
    assert {j.name for j in ones} == {f"one[s=s{i:03d}]" for i in range(SAMPLES)}
    assert {(j.state, j.cpu, j.memory) for j in ones} == {("succeeded", 0.5, 50 * 10**6)}
    assert len({j.created_at for j in ones}) == 1, "the ready samples went in more than one submit"
    [gather] = [j for j in jobs if j.name == "gather"]
    assert gather.state == "succeeded"
    assert "--target-jobs" in " ".join(client.get(gather.uuid).spec["argv"])  # a run: block runs Snakemake


def test_a_failed_rule_reports_its_exit_code_reason_and_stderr(running: Running, tmp_path: Path) -> None:
    folder = workflow(tmp_path / "fails", """
rule boom:
    output: "never.txt"
    shell: "echo the-detail-that-explains >&2; exit 3"
""")
    done = snakemake(running, folder, "-j", "2")
    assert done.returncode != 0
    assert "failed with exit code 3" in done.stderr and "the-detail-that-explains" in done.stderr, done.stderr
    [run] = runs_of(running.client(), folder)
    [boom] = running.client().list(parent=run.uuid)
    assert boom.state == "failed" and f"jobnest job {boom.uuid}" in done.stderr
    assert running.client().get(run.uuid).state == "failed"  # the driver ends as Snakemake did


def test_a_shell_rule_gets_what_snakemakes_shell_gives_it(running: Running, tmp_path: Path) -> None:
    """The Snakefile's shell prefix, the thread variables, declared envvars, and a resource the
    job must resolve itself (tmpdir, by Snakemake run for the job)."""
    folder = workflow(tmp_path / "shell", """
shell.prefix("PREFIXED=yes; ")
envvars: "JOBNEST_TEST_SECRET"

rule all:
    input: "env.txt", "tmp.txt"

rule env:
    output: "env.txt"
    threads: 3
    shell: "echo $PREFIXED $OMP_NUM_THREADS $JOBNEST_TEST_SECRET > {output}"

rule tmp:
    output: "tmp.txt"
    shell: "echo {resources.tmpdir} $JOBNEST_TEST_SECRET > {output}"
""")
    os.environ["JOBNEST_TEST_SECRET"] = "s3cret"
    try:
        done = snakemake(running, folder, "-j", "2", "--jobnest-cpu-per-thread", "0.5")
    finally:
        del os.environ["JOBNEST_TEST_SECRET"]
    assert done.returncode == 0, done.stderr
    assert (folder / "env.txt").read_text() == "yes 3 s3cret\n"
    tmp, secret = (folder / "tmp.txt").read_text().split()
    assert Path(tmp).is_dir() and secret == "s3cret"
    [run] = runs_of(running.client(), folder)
    argv = {j.name: running.client().get(j.uuid).spec["argv"] for j in running.client().list(parent=run.uuid)}
    assert "--target-jobs" in " ".join(argv["tmp"])
    assert not any("s3cret" in " ".join(a) for a in argv.values())  # in the jobs' env, not their argv


def test_bad_settings_name_the_flag(running: Running, tmp_path: Path) -> None:
    folder = workflow(tmp_path / "bad", 'rule a:\n    output: "a"\n    shell: "touch {output}"\n')
    done = snakemake(running, folder, "-j", "1", "--jobnest-cpu-per-thread", "0")
    assert done.returncode != 0 and "jobnest-cpu-per-thread" in done.stderr, done.stderr
    refused = snakemake(running, folder, "-j", "1", "--jobnest-executor", "no-such-executor")
    assert refused.returncode != 0 and "jobnest refused the jobs of a: jobs[0].executor" in refused.stderr, \
        refused.stderr
    assert not (folder / "a").exists()


def test_rules_run_in_containers_of_the_docker_executor(docker_running: Running, tmp_path: Path) -> None:
    folder = workflow(tmp_path / "mounts" / "indocker", """
rule all:
    input: expand("out/{n}.txt", n=range(3))

rule one:
    output: "out/{n}.txt"
    shell: "echo $(hostname)-{wildcards.n} > {output}"
""")
    done = snakemake(docker_running, folder, "-j", "3", "--jobnest-executor", "docker",
                     "--container-image", BUSYBOX)
    assert done.returncode == 0, done.stderr
    made = [(folder / f"out/{n}.txt").read_text().rsplit("-", 1) for n in range(3)]
    assert [n for _, n in made] == ["0\n", "1\n", "2\n"]
    hosts = {host for host, _ in made}
    assert len(hosts) == 3 and socket.gethostname() not in hosts  # each ran in a container of its own
    client = docker_running.client()
    [run] = runs_of(client, folder)
    jobs = list(client.list(parent=run.uuid))
    assert len(jobs) == 3 and all(j.executor == "docker" and j.state == "succeeded" for j in jobs)
    assert client.get(jobs[0].uuid).spec["image"] == BUSYBOX


def test_rules_run_on_slurm(slurm_running: Running, tmp_path: Path) -> None:
    folder = workflow(tmp_path / "onslurm", """
rule all:
    input: expand("out/{n}.txt", n=range(2))

rule one:
    output: "out/{n}.txt"
    shell: "echo $SLURM_JOB_ID > {output}"
""")
    done = snakemake(slurm_running, folder, "-j", "2", "--jobnest-executor", "slurm")
    assert done.returncode == 0, done.stderr
    assert all((folder / f"out/{n}.txt").read_text().strip().isdigit() for n in range(2))  # in Slurm's jobs
    [run] = runs_of(slurm_running.client(), folder)
    jobs = list(slurm_running.client().list(parent=run.uuid))
    assert {j.executor for j in jobs} == {"slurm"}
    assert "--target-jobs" in " ".join(slurm_running.client().get(jobs[0].uuid).spec["argv"])  # waits for inputs


def test_the_readme_example_runs_as_a_job_its_rules_its_children(running: Running, tmp_path: Path) -> None:
    """examples/snakemake, with Snakemake itself a jobnest job (`jobnest submit`): its rule
    instances become that job's children, and its outputs land in the folder."""
    folder = tmp_path / "example"
    shutil.copytree(ROOT / "examples" / "snakemake", folder)
    client = running.client()
    runner = client.submit([sys.executable, "-m", "snakemake", "--executor", "jobnest", "-j", "10"], name="runner",
                           cwd=str(folder), reuse=False, env={"PATH": os.environ["PATH"]})
    assert runner.wait(timeout=120).state == "succeeded", runner.info.reason
    assert (folder / "report.txt").read_text() == "alpha: 5 letters\nbeta: 4 letters\ngamma: 5 letters\n"
    children = sorted(j.name for j in client.list(parent=runner.uuid))
    assert children == ["count[sample=alpha]", "count[sample=beta]", "count[sample=gamma]", "report"]
    assert not runs_of(client, folder)  # no driver of its own


SLOW = """
rule all:
    input: "slow.txt", "quick.txt"

rule slow:
    output: "slow.txt"
    shell: "while [ ! -e go ]; do sleep 0.1; done; echo slow > {output}"

rule quick:
    output: "quick.txt"
    shell: "echo quick > {output}"
"""


def start_slow(running: Running, folder: Path) -> tuple["subprocess.Popen[str]", jobnest.JobInfo]:
    """Snakemake running the SLOW workflow in `folder`, once its slow job runs; and that job."""
    run = snakemake(running, folder, "-j", "2", wait=False)
    assert isinstance(run, subprocess.Popen)
    client = running.client()
    slow = wait_for(lambda: next((j for j in client.list(states=["running"]) if j.name == "slow"), None), timeout=60)
    return run, slow


def test_a_run_killed_mid_way_reattaches_to_its_running_job(running: Running, tmp_path: Path) -> None:
    """After `kill -9`, Snakemake needs `--unlock`, then `--rerun-incomplete`: the job it started
    and still runs is followed, not started again."""
    folder = workflow(tmp_path / "killed", SLOW)
    client = running.client()
    first, slow = start_slow(running, folder)
    wait_for(lambda: (folder / "quick.txt").exists(), timeout=60)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert client.get(slow.uuid).state == "running"  # jobs outlive their driver

    unlocked = snakemake(running, folder, "--unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    again = snakemake(running, folder, "-j", "2", "--rerun-incomplete", wait=False)
    assert isinstance(again, subprocess.Popen)
    wait_for(lambda: len(runs_of(client, folder)) == 2, timeout=60)
    (folder / "go").touch()
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output
    assert f"job {slow.uuid} of an earlier run is still going; following it" in output
    assert (folder / "slow.txt").read_text() == "slow\n"
    assert [j.uuid for j in client.list() if j.name == "slow"] == [slow.uuid]
    assert client.get(slow.uuid).state == "succeeded"


def test_a_restarted_run_cancels_an_earlier_job_whose_rule_changed(running: Running, tmp_path: Path) -> None:
    folder = workflow(tmp_path / "edited", SLOW)
    client = running.client()
    first, slow = start_slow(running, folder)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    (folder / "Snakefile").write_text(SLOW.replace("echo slow", "echo edited"))
    assert snakemake(running, folder, "--unlock").returncode == 0
    again = snakemake(running, folder, "-j", "2", "--rerun-incomplete", wait=False)
    assert isinstance(again, subprocess.Popen)
    assert wait_for(lambda: client.get(slow.uuid).state == "cancelled", timeout=60)
    (folder / "go").touch()
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output
    assert f"cancelling job {slow.uuid} of an earlier run: its rule has changed since" in output
    assert (folder / "slow.txt").read_text() == "edited\n"


TWO_WAITING = """
rule all:
    input: "a.txt", "b.txt"

rule one:
    output: "{x}.txt"
    shell: "while [ ! -e go ]; do sleep 0.1; done; echo {wildcards.x} > {output}"
"""


def test_a_run_outlives_a_controller_restart(tmp_path: Path) -> None:
    """The controller is killed while the rules run and they end while it is down: started again
    on the same port, it is watched again, and Snakemake learns of the ends it missed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()

    def controller() -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "jobnest_controller", "--home", str(home), "--listen", f"127.0.0.1:{port}",
                "--docker", "none"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(tmp_path / "controller.log", "a"),
                                text=True, env={**os.environ, "JOBNEST_ADMIN_TOKEN": ADMIN})
        assert proc.stdout is not None and proc.stdout.readline().startswith("port ")
        return proc

    folder = workflow(tmp_path / "restarted", TWO_WAITING)
    proc = controller()
    try:
        client = jobnest.Client(f"127.0.0.1:{port}", ADMIN, driver=False)
        env = {**os.environ, "JOBNEST_CONTROLLER": f"127.0.0.1:{port}", "JOBNEST_TOKEN": ADMIN}
        env.pop("JOBNEST_JOB", None)
        run = subprocess.Popen([sys.executable, "-m", "snakemake", "--executor", "jobnest", "-j", "2"], cwd=folder,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: len(list(client.list(states=["running"]))) == 3, timeout=60)  # the driver and its two
        proc.kill()
        proc.wait()
        (folder / "go").touch()
        wait_for(lambda: (folder / "a.txt").exists() and (folder / "b.txt").exists(), timeout=30)
        proc = controller()
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0 and "watch broke" in output, output
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_interrupting_a_run_cancels_its_jobs(running: Running, tmp_path: Path) -> None:
    folder = workflow(tmp_path / "interrupted", SLOW)
    client = running.client()
    first, slow = start_slow(running, folder)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=60)
    assert first.returncode != 0
    assert wait_for(lambda: client.get(slow.uuid).state == "cancelled", timeout=30), output


RAN = {"simple": ["a", "b", "c", "d[somewildcard=somedir1]", "d[somewildcard=somedir2/subdir]"],
       "groups": ["c", "foo_a_b[sample=1]", "foo_a_b[sample=2]", "foo_a_b[sample=3]"]}  # a job per group


class TestSnakemakesStandardWorkflows(TestWorkflowsLocalStorageBase):
    """Snakemake's own test base for executor plugins (its simple and group workflows), run in this
    process against a real controller."""
    __test__ = True

    @pytest.fixture(autouse=True)
    def controller(self, running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("JOBNEST_CONTROLLER", running.address)
        monkeypatch.setenv("JOBNEST_TOKEN", ADMIN)
        monkeypatch.delenv("JOBNEST_JOB", raising=False)
        self.running = running

    def run_workflow(self, test_name: str, tmp_path: Path, deployment_method: frozenset[str] = frozenset()) -> None:
        super().run_workflow(test_name, tmp_path, deployment_method)
        client = self.running.client()
        [run] = runs_of(client, tmp_path / test_name)
        ran = sorted((j.name, j.state) for j in client.list(parent=run.uuid))
        assert ran == [(name, "succeeded") for name in RAN[test_name]]

    def get_executor(self) -> str:
        return "jobnest"

    def get_executor_settings(self) -> ExecutorSettings:
        return ExecutorSettings(cpu_per_thread=0.5)
