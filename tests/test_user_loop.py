"""The user's loop (issue 12), from the user's side: a failure explains itself where the user
looks (the job's reason, `show`, `tree`), and jobs are found by name."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import jobnest

from .conftest import ADMIN, Running, wait_for
from .test_cli import cli


def test_a_failure_names_its_cause_and_what_it_said(where: tuple[Running, dict[str, Any]]) -> None:
    """Before: `exit code 3`, and downstream `condition cannot hold: job 0ae5c8a6159bf423ade41c9c7c0c0ac5
    cancelled`, the cause two hops up in nobody's words."""
    running, options = where
    client = running.client()
    align = client.submit(["sh", "-c", "echo reading sample 3 >&2; echo 'sample-3.fq: truncated' >&2; exit 3"],
                          name="align-3", **options)
    merge = client.submit(["true"], name="merge", when=align.succeeded, **options)
    report = client.submit(["true"], name="report", inputs={"m": merge.output}, **options)
    for job in (align, merge, report):
        job.wait(timeout=60)
    said = f"job align-3 ({align.uuid[:8]}) failed: exit code 3: sample-3.fq: truncated"
    assert align.info.reason == "exit code 3: sample-3.fq: truncated"
    assert merge.info.reason == f"condition cannot hold: {said}"
    assert report.info.reason == f"condition cannot hold: job merge ({merge.uuid[:8]}) cancelled; root cause: {said}"


def test_a_missing_program_says_so_in_its_reason(running: Running) -> None:
    job = running.client().submit(["no-such-tool-xyz", "--in", "a.fq"]).wait(timeout=30)
    assert job.state == "failed" and job.info.reason.startswith("exit code 127: ")
    assert "no-such-tool-xyz" in job.info.reason and "not found" in job.info.reason


def test_show_prints_the_reason_with_the_cause(running: Running, tmp_path: Path) -> None:
    client = running.client()
    bad = client.submit(["sh", "-c", "echo 'bwa: index missing' >&2; exit 1"], name="align").wait(timeout=30)
    shown = cli(running, "show", bad.uuid)
    assert shown.returncode == 0 and "exit code 1: bwa: index missing" in shown.stdout, shown


def test_a_job_is_named_by_its_name_where_an_id_is_expected(running: Running) -> None:
    client = running.client()
    first = client.submit(["sh", "-c", "echo one"], name="qc-1").wait(timeout=30)
    client.submit(["sh", "-c", "echo two"], name="qc-2").wait(timeout=30)
    assert cli(running, "logs", "qc-1").stdout == "one\n"
    assert client.get("qc-1").uuid == first.uuid
    client.submit(["sh", "-c", "echo again"], name="qc-1", reuse=False).wait(timeout=30)
    twice = cli(running, "show", "qc-1")
    assert twice.returncode == 1 and "names 2 jobs" in twice.stderr, twice
    try:
        client.get("nothing-by-this-name")
    except jobnest.NotFound as e:
        assert "no job" in str(e)
    else:
        raise AssertionError("a name no job has was found")


def test_ls_lists_newest_first_and_filters_by_name(running: Running) -> None:
    client = running.client()
    for i in range(4):
        client.submit(["true", str(i)], name=f"sample-{i}").wait(timeout=30)
    client.submit(["true"], name="merge").wait(timeout=30)
    listed = cli(running, "ls", "--limit", "3")
    names = [line.split()[2] for line in listed.stdout.splitlines()[1:]]
    assert names == ["merge", "sample-3", "sample-2"], listed.stdout
    named = cli(running, "ls", "--name", "sample-*", "--json")
    assert sorted(j["name"] for j in __import__("json").loads(named.stdout)) == [f"sample-{i}" for i in range(4)]


def test_map_and_each_name_each_job_after_its_item(running: Running, tmp_path: Path) -> None:
    client = running.client()
    jobs = client.map(["echo", "{item}"], ["s1", "s2"], name="qc-{item}")
    assert [j.info.name for j in jobs] == ["qc-s1", "qc-s2"]
    (tmp_path / "items").write_text("a\nb\n")
    done = cli(running, "run", "--each", str(tmp_path / "items"), "--name", "proc-{item}", "--", "echo", "{item}")
    assert done.returncode == 0, done
    assert {j.name for j in client.list()} >= {"proc-a", "proc-b"}


def test_a_held_job_says_which_jobs_it_waits_for(running: Running) -> None:
    """Before: an empty reason, then 'the jobs it waits on have not ended', naming none."""
    client = running.client()
    align = client.submit(["sleep", "3"], name="align")
    qc = client.submit(["sleep", "3"], name="qc")
    merge = client.submit(["true"], name="merge", when=align.succeeded & ~qc.failed)
    report = client.submit(["cat", "{inputs.m}"], name="report", inputs={"m": merge.output})
    wait_for(lambda: client.get(report.uuid).reason.startswith("waiting until"))
    assert client.get(merge.uuid).reason == \
        f"waiting until job align ({align.uuid[:8]}) succeeded and not job qc ({qc.uuid[:8]}) failed"
    assert client.get(report.uuid).reason == f"waiting until job merge ({merge.uuid[:8]}) succeeded"
    assert f"waiting until job merge ({merge.uuid[:8]}) succeeded" in cli(running, "show", report.uuid).stdout
    listed = {j.name: j.reason for j in client.list()}  # and in listings: `tree`, `ls`
    assert listed["report"] == f"waiting until job merge ({merge.uuid[:8]}) succeeded"
    assert f"waiting until job align ({align.uuid[:8]}) succeeded" in cli(running, "tree", merge.uuid).stdout
    client.cancel(align.uuid)
    client.cancel(qc.uuid)


def test_an_image_is_never_ignored(running: Running) -> None:
    """Before, `image=` without `executor=` ran the job on the host, in no image."""
    client = running.client()  # a controller with no container executor
    try:
        client.submit(["true"], image="debian:bookworm")
    except jobnest.InvalidSpec as e:
        assert e.field == "jobs[0].image" and "no container executor" in str(e)
    else:
        raise AssertionError("an image was ignored")
    try:
        client.submit(["true"], image="debian:bookworm", executor="local")
    except jobnest.InvalidSpec as e:
        assert e.field == "jobs[0].image" and "runs on the host" in str(e)
    else:
        raise AssertionError("an image was ignored")


def _interrupted(running: Running, args: list[str], job_name: str) -> subprocess.CompletedProcess[str]:
    """`args` run as a user would, Ctrl-C'd (SIGINT) once its job named `job_name` runs."""
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = running.client()
    wait_for(lambda: any(j.name == job_name and j.state == "running" for j in client.list()), timeout=30)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_ctrl_c_in_a_driver_says_what_goes_on_without_a_traceback(running: Running, tmp_path: Path) -> None:
    program = tmp_path / "pipeline.py"
    program.write_text("import jobnest\njobnest.connect().submit(['sleep', '60'], name='long-align').wait()\n")
    done = _interrupted(running, [sys.executable, str(program)], "long-align")
    [driver] = [j for j in running.client().list() if j.name == "pipeline.py"]
    assert done.returncode in (130, -signal.SIGINT) and "Traceback" not in done.stderr, done.stderr  # as by SIGINT
    assert "interrupted. The jobs this program submitted go on" in done.stderr
    assert f"jobnest cancel {driver.uuid[:8]}" in done.stderr
    [align] = [j for j in running.client().list() if j.name == "long-align"]
    assert align.state == "running"  # it goes on, as said
    running.client().cancel(driver.uuid)


def test_ctrl_c_in_jobnest_run_cancels_its_job_and_says_so(running: Running) -> None:
    """Before: `Aborted!`, and the job went on running unseen."""
    done = _interrupted(running, [sys.executable, "-c", "from jobnest._cli import main; main()", "run",
                                  "--name", "long-sort", "--", "sleep", "60"], "long-sort")
    assert done.returncode == 130 and "Aborted" not in done.stderr, done.stderr
    [job] = [j for j in running.client().list() if j.name == "long-sort"]
    assert f"job {job.uuid[:8]} is cancelled" in done.stderr
    wait_for(lambda: running.client().get(job.uuid).state == "cancelled")


def test_each_attempt_is_kept_and_shown(running: Running, tmp_path: Path) -> None:
    """Before, a retry was seen only in controller.log, and `show` gave the first memory."""
    flag = tmp_path / "tried"
    job = running.client().submit(["sh", "-c", f"if [ -e {flag} ]; then echo fine; else touch {flag}; "
                                   "echo 'disk quota exceeded' >&2; exit 5; fi"], name="flaky", retries=2,
                                  memory="64Mi").wait(timeout=30)
    assert job.state == "succeeded"
    info = running.client().get(job.uuid)
    assert [(a["attempt"], a["exit_code"], a["reason"]) for a in info.attempts] == [
        (1, 5, "exit code 5: disk quota exceeded"), (2, 0, "exit code 0")]
    assert all(a["memory"] == 64 * 2**20 and a["node"] == "local" for a in info.attempts)
    shown = cli(running, "show", job.uuid).stdout
    assert "attempt 1: " in shown and "on local, 64 MiB: exit code 5: disk quota exceeded" in shown, shown
    assert "attempt 2: " in shown and "on local, 64 MiB: exit code 0" in shown


def test_an_attempt_line_says_what_it_had_and_how_it_ended() -> None:
    from jobnest._render import attempt

    assert attempt({"attempt": 2, "exit_code": 137, "reason": "out of memory", "memory": 48 * 2**20, "node": "n1",
                    "started_at": 100.0, "finished_at": 103.25}) == "attempt 2: 3.2s on n1, 48 MiB: out of memory"


def test_why_tells_the_truth_about_a_rerun(running: Running, tmp_path: Path) -> None:
    """Before: 'no earlier run is named merge' for a job that never started; after an invalidate,
    a comparison with an unrelated run; 'inputs' without saying which."""
    client = running.client()
    gate = client.submit(["sh", "-c", "exit 1"], name="gate").wait(timeout=30)
    never = client.submit(["true"], name="merge", when=gate.succeeded).wait(timeout=30)
    assert client.why(never.uuid)["explanation"] == "has not run: it was cancelled before it started"

    first = client.submit(["echo", "a"], name="count").wait(timeout=30)
    client.submit(["echo", "other"], name="count").wait(timeout=30)  # a nearer run of the name, unrelated
    client.invalidate(first.info.run_uuid)
    again = client.submit(["echo", "a"], name="count").wait(timeout=30)
    assert client.why(again.uuid)["explanation"] == \
        f"ran: run {first.info.run_uuid} has the same signature but its result was invalidated"

    (tmp_path / "x.txt").write_text("one")
    (tmp_path / "y.txt").write_text("two")
    before = client.submit(["cat", "{inputs.x}", "{inputs.y}"], name="join",
                           inputs={"x": jobnest.upload(tmp_path / "x.txt"), "y": jobnest.upload(tmp_path / "y.txt")})
    before.wait(timeout=30)
    (tmp_path / "y.txt").write_text("changed")
    after = client.submit(["cat", "{inputs.x}", "{inputs.y}"], name="join",
                          inputs={"x": jobnest.upload(tmp_path / "x.txt"), "y": jobnest.upload(tmp_path / "y.txt")})
    after.wait(timeout=30)
    why = client.why(after.uuid)
    assert why["differing"] == ["inputs"]
    assert why["explanation"].startswith(f"ran: differs from run {before.info.run_uuid} in inputs (inputs y: ")
    assert ", x" not in why["explanation"]


def test_errors_speak_the_user_s_terms(running: Running) -> None:
    """Before: `expected 'Bearer <token>'` (users never type that) and memory in raw bytes."""
    try:
        jobnest.Client(running.address, "not a token!").get("x" * 8)
    except jobnest.Unauthenticated as e:
        assert "no token jobnest made (check JOBNEST_TOKEN" in str(e) and "Bearer" not in str(e)
    else:
        raise AssertionError("a malformed token was taken")
    try:
        running.client().submit(["true"], memory="64Ti")
    except jobnest.InvalidSpec as e:
        assert e.field == "jobs[0].memory" and "65536.00 GiB is more than the largest node has (" in str(e)
        assert " GiB)" in str(e)
    else:
        raise AssertionError("64 TiB was taken")


def test_ls_json_shows_no_empty_argv(running: Running) -> None:
    running.client().submit(["echo", "hi"], name="greet").wait(timeout=30)
    [listed] = __import__("json").loads(cli(running, "ls", "--json").stdout)
    assert listed["name"] == "greet" and "argv" not in listed and "attempts" not in listed


def test_a_waiting_driver_shows_its_progress(running: Running, tmp_path: Path) -> None:
    """Before, a driver showed nothing while it waited. Not on a terminal: plain lines."""
    program = tmp_path / "pipeline.py"
    program.write_text("import jobnest\nc = jobnest.connect()\n"
                       "c.wait([c.submit(['sleep', str(1.5 + i)], name=f's{i}', cpu=0.1).uuid for i in range(3)])\n")
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    done = subprocess.run([sys.executable, str(program)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("jobnest: 3 jobs: ● ") and "running" in lines[0], lines  # while they run
    assert lines[-1] == "jobnest: 3 jobs: ✔ 3 succeeded"
    quiet = subprocess.run([sys.executable, str(program)], env={**env, "JOBNEST_PROGRESS": "0"}, capture_output=True,
                           text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_the_progress_line() -> None:
    from jobnest._render import progress

    assert progress(["running", "queued", "queued", "failed"]) == "jobnest: 4 jobs: ● 1 running  ◷ 2 queued  ✖ 1 failed"
    assert progress(["succeeded"]) == "jobnest: 1 job: ✔ 1 succeeded"


def test_names_with_a_nul_are_refused_clearly_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """PostgreSQL refuses a NUL in a query: a name lookup or a listing by name must not send one."""
    from jobnest_controller.app import Controller

    from .conftest import make_settings, new_database

    controller = Controller(make_settings(tmp_path / "home", store_url=new_database(postgres_url, tmp_path)))
    controller.start()
    try:
        client = Running(controller).client()
        for call in (lambda: client.get("qc\0-1"), lambda: list(client.list(name="qc\0*"))):
            try:
                call()
            except (jobnest.NotFound, jobnest.InvalidSpec) as e:
                assert e.field in ("uuid", "name")
            else:
                raise AssertionError("a NUL went through")
    finally:
        controller.stop(grace=0)


def test_a_job_runs_in_its_own_folder_however_it_is_submitted(running: Running, tmp_path: Path) -> None:
    """Before, an SDK job ran in its output folder and `jobnest run` in the caller's: one read
    `data/raw.csv` and the other found nothing. Now both run in their own folder, and --cwd says
    where else."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "raw.csv").write_text("a,b\n1,2\n")
    command = ["sh", "-c", "pwd; wc -l < data/raw.csv"]
    from_sdk = running.client().submit(command, name="sdk").wait(timeout=30)
    from_cli = cli(running, "run", "--name", "cli", "--", *command, cwd=project)
    from_cli_job = running.client().get("cli")
    for job in (from_sdk.info, from_cli_job):
        assert job.state == "failed" and "data/raw.csv" in job.reason, job
    assert from_sdk.logs() == f"{from_sdk.info.output_dir}\n"
    assert from_cli.returncode != 0 and from_cli.stdout == f"{from_cli_job.output_dir}\n", from_cli
    here = cli(running, "run", "--cwd", ".", "--", *command, cwd=project)
    assert here.returncode == 0 and here.stdout.split() == [str(project), "2"], here


# A pipeline with a script beside it: the jobs get the script as an input (signed over its
# content), never the folder, so nothing else beside the program is in their signatures.
PIPELINE = """
import sys
from pathlib import Path
import jobnest

client = jobnest.connect()
qc = jobnest.upload(Path(__file__).parent / "qc.sh")
jobs = [client.submit(["sh", "{inputs.qc}", s], name=f"qc-{s}", inputs={"qc": qc}) for s in ("a", "b", "c")]
client.wait([j.uuid for j in jobs])
sys.exit(0 if all(j.state == "succeeded" for j in jobs) else 1)
"""


def _submitted(running: Running, program: Path) -> list[jobnest.JobInfo]:
    """`jobnest submit --wait program`: the runner's tree, the runner first."""
    done = cli(running, "submit", "--wait", str(program))
    assert done.returncode == 0, done
    runner = done.stdout.split()[0]
    return sorted(running.client().list(subtree=runner), key=lambda j: j.uuid != runner)


def test_a_driver_and_a_runner_of_one_pipeline_share_their_work(running: Running, tmp_path: Path) -> None:
    """Before, a runner's children were signed over every file beside the program: a driver run
    and a runner run never shared a job, and editing NOTES.txt reran all of them."""
    folder = tmp_path / "pipeline"
    folder.mkdir()
    (folder / "pipeline.py").write_text(PIPELINE)
    (folder / "qc.sh").write_text('echo "qc of $1"\n')
    (folder / "NOTES.txt").write_text("first try\n")
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    driven = subprocess.run([sys.executable, str(folder / "pipeline.py")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert driven.returncode == 0, driven
    runner, *children = _submitted(running, folder / "pipeline.py")
    assert runner.state == "succeeded" and not runner.reused
    assert len(children) == 3 and all(j.reused for j in children), children  # the driver's work
    (folder / "NOTES.txt").write_text("second try: the notes changed, nothing the jobs run\n")
    runner, *children = _submitted(running, folder / "pipeline.py")
    assert not runner.reused and all(j.reused for j in children)  # the runner's folder changed; its jobs' did not
    (folder / "qc.sh").write_text('echo "better qc of $1"\n')
    runner, *children = _submitted(running, folder / "pipeline.py")
    assert not any(j.reused for j in children)  # what they run changed
    assert running.client().job(children[0].uuid).logs().startswith("better qc of ")


def test_a_program_folder_streams_and_keeps_out_what_jobnestignore_names(running: Running, tmp_path: Path) -> None:
    """Before, the folder was tarred in memory and sent in one message: a 120 MB FASTQ beside the
    script failed the submit. Now it streams as data; `.jobnestignore` leaves files out."""
    folder = tmp_path / "pipeline"
    (folder / "reads").mkdir(parents=True)
    (folder / "reads" / "big.fq").write_bytes(os.urandom(70 * 2**20))  # over what one message may carry
    (folder / "count.py").write_text("from pathlib import Path\n"
                                     "print(sorted(str(p) for p in Path('.').rglob('*') if p.is_file()))\n"
                                     "big = Path('reads/big.fq')\n"
                                     "print(big.stat().st_size if big.exists() else 0)\n")
    client = running.client()
    job = client.submit_program(folder / "count.py").wait(timeout=120)
    assert job.state == "succeeded", job.info.reason
    assert job.logs().splitlines() == ["['count.py', 'reads/big.fq']", str(70 * 2**20)]
    (folder / ".jobnestignore").write_text("# data, not code\n*.fq\n")
    lean = client.submit_program(folder / "count.py").wait(timeout=60)
    assert lean.logs().splitlines() == ["['.jobnestignore', 'count.py']", "0"]


def test_a_graph_with_a_mistake_is_refused_before_any_of_it_starts(running: Running, tmp_path: Path) -> None:
    """Before, a missing input halfway through a submit loop left the first half running. Sent
    as one graph (`client.batch()`, as the README shows), a mistake anywhere stops all of it."""
    client = running.client()
    (tmp_path / "sample-1.fq").write_text("@r\nACGT\n+\nIIII\n")
    reads = {name: jobnest.upload(tmp_path / f"{name}.fq") for name in ("sample-1", "sample-2")}  # no sample-2.fq
    nobody = jobnest.Job(client, "0" * 32)
    for mistake, said in (({"inputs": {"reads": reads["sample-2"]}}, "sample-2.fq' does not exist"),
                          ({"inputs": {"reads": reads["sample-1"]}, "when": nobody.succeeded}, "jobs[2].when")):
        try:
            with client.batch() as batch:
                first = batch.submit(["wc", "-l", "{inputs.reads}"], name="qc-1", inputs={"reads": reads["sample-1"]})
                batch.submit(["true"], name="align-1", when=first.succeeded)
                batch.submit(["wc", "-l", "{inputs.reads}"], name="qc-2", **mistake)
        except jobnest.JobnestError as e:
            assert said in str(e), e
        else:
            raise AssertionError("a graph with a mistake was accepted")
        assert list(client.list()) == []  # nothing of it started
