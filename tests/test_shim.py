"""The exec-redirection shim (LD_PRELOAD) and its PATH-mode wrappers, with real programs: bash,
make, a C program calling every wrapped exec variant, and a real controller."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobnest

from .conftest import ADMIN, BUSYBOX, Running, wait_for

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "build" / "shim" / "libjobnest_exec.so"
HELPER = str(Path(sys.executable).parent / "jobnest")


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A folder of small programs: `say` prints its arguments and exits 3, `greet` prints them,
    `slow` takes a second."""
    if not SHIM.exists():
        pytest.fail(f"no shim at {SHIM.relative_to(ROOT)}: run `make shim` (make test does)")
    folder = tmp_path / "tools"
    folder.mkdir()
    for name, body in (("say", 'echo "$@"; exit 3'), ("greet", 'echo "$@"'), ("slow", 'sleep 1; echo "$@"')):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def shim_env(running: Running | None, tools: Path, redirect: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBNEST_")}
    env |= {"LD_PRELOAD": str(SHIM), "JOBNEST_EXEC_HELPER": HELPER, "PATH": f"{tools}:{env['PATH']}"}
    if redirect is not None:
        env["JOBNEST_EXEC_REDIRECT"] = redirect
    if running is not None:
        env |= {"JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    return env | extra


def sh(env: dict[str, str], script: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def calls(running: Running) -> list[jobnest.JobInfo]:
    """The redirected calls, oldest first: not the jobs of their callers."""
    return [j for j in running.client().list() if j.executor != "driver"]


def test_every_exec_variant_of_a_whitelisted_program_becomes_a_child_job(running: Running, tools: Path,
                                                                         tmp_path: Path) -> None:
    program = tmp_path / "every_exec"
    subprocess.run(["cc", "-O1", "-o", str(program), str(ROOT / "tests" / "shim" / "every_exec.c")], check=True)
    env = {"LD_PRELOAD": str(SHIM), "JOBNEST_EXEC_REDIRECT": "say", "JOBNEST_EXEC_HELPER": HELPER,
           "PATH": f"{tools}:/usr/bin:/bin"}
    client = running.client()
    caller = client.submit([str(program), str(tools / "say"), "/bin/echo"], env=env, name="caller")
    assert caller.wait(timeout=120).state == "succeeded", caller.logs(stream=None)
    variants = ["execve", "execv", "execvp", "execvpe", "execl", "execlp", "execle", "posix_spawn", "posix_spawnp"]
    report = [line for line in caller.logs().splitlines() if ": " in line]
    assert report == [f"{v} {name}: {code}" for v in variants for name, code in (("say", 3), ("echo", 0))]
    children = list(client.list(parent=caller.uuid))
    assert sorted(c.name for c in children) == sorted(f"say {v}" for v in variants)  # echo ran here, not as a job
    assert sorted(client.job(c.uuid).logs() for c in children) == sorted(f"{v}\n" for v in variants)
    assert {c.exit_code for c in children} == {3}
    tree = subprocess.run([HELPER, "tree", caller.uuid], env={**os.environ, "JOBNEST_CONTROLLER": running.address,
                                                              "JOBNEST_TOKEN": ADMIN}, capture_output=True, text=True)
    assert tree.stdout.count("say") == len(variants)


def test_a_pipeline_in_bash_runs_the_whitelisted_stage_as_one_job_and_a_rerun_reuses_it(
        running: Running, tools: Path, tmp_path: Path) -> None:
    env = shim_env(running, tools, "wc,greet")
    first = sh(env, 'printf "a\\nb\\n" | wc -l')
    assert first.returncode == 0 and first.stdout.strip() == "2", first.stderr
    [job] = calls(running)
    assert job.name == "wc -l" and job.state == "succeeded"
    assert sh(env, 'printf "a\\nb\\n" | wc -l').stdout.strip() == "2"
    assert [j.reused for j in calls(running)] == [False, True]
    # The tool's binary is part of the signature: the same script reuses, a changed tool runs.
    runs = [sh(env, "greet hello", cwd=tmp_path) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0] and runs[1].stdout == "hello\n"
    (tools / "greet").write_text('#!/bin/sh\necho "$@" again\n')
    assert sh(env, "greet hello", cwd=tmp_path).stdout == "hello again\n"
    greets = [j for j in calls(running) if j.name == "greet hello"]
    assert [j.reused for j in greets] == [False, True, False]
    assert running.client().why(greets[2].uuid)["differing"] == ["cache_version"]
    # So are the files its arguments name: a changed input runs again.
    (tmp_path / "data.txt").write_text("1\n2\n")
    counts = [sh(env, "wc -l data.txt", cwd=tmp_path).stdout for _ in range(2)]
    (tmp_path / "data.txt").write_text("1\n2\n3\n")
    counts.append(sh(env, "wc -l data.txt", cwd=tmp_path).stdout)
    assert counts == ["2 data.txt\n", "2 data.txt\n", "3 data.txt\n"]
    assert [j.reused for j in calls(running) if j.name == "wc -l data.txt"] == [False, True, False]
    # A redirected tool can be given cpu and memory (before, never: every call got the defaults).
    sized = sh({**env, "JOBNEST_EXEC_CPU": "0.5", "JOBNEST_EXEC_MEMORY": "64Mi"}, "greet sized", cwd=tmp_path)
    assert sized.returncode == 0 and sized.stdout == "sized again\n", sized.stderr
    [job] = [j for j in calls(running) if j.name == "greet sized"]
    assert (job.cpu, job.memory) == (0.5, 64 * 2**20)
    bad = sh({**env, "JOBNEST_EXEC_CPU": "half"}, "greet x", cwd=tmp_path)
    assert bad.returncode == 2 and "JOBNEST_EXEC_CPU: 'half' is not a share of a core" in bad.stderr


def test_make_runs_whitelisted_recipes_as_concurrent_jobs(running: Running, tools: Path, tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("all: a b\na:\n\tslow a\nb:\n\tslow b\n")
    done = subprocess.run(["make", "-s", "-j2"], env=shim_env(running, tools, "slow"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and sorted(done.stdout.split()) == ["a", "b"], done.stderr
    a, b = sorted(calls(running), key=lambda j: j.started_at or 0)
    assert sorted([a.name, b.name]) == ["slow a", "slow b"]
    assert b.started_at < a.finished_at  # they overlapped  # type: ignore[operator]
    [make] = [j for j in running.client().list() if j.executor == "driver"]  # one job for the make, theirs
    assert make.name == "make -s -j2" and a.spawned_by_job_uuid == b.spawned_by_job_uuid == make.uuid
    ended = running.client().job(make.uuid).wait(timeout=30).info
    assert ended.state == "succeeded", ended  # it ended with the make


@pytest.mark.parametrize("redirect, words", [
    ("", "JOBNEST_EXEC_REDIRECT is malformed: it is empty"),
    ("wc,,say", "it has an empty name"),
    ("/usr/bin/wc", "give program names, not paths"),
])
def test_a_bad_whitelist_fails_every_exec_loudly(tools: Path, redirect: str, words: str) -> None:
    done = sh(shim_env(None, tools, redirect), "/bin/echo never")
    assert done.returncode != 0 and words in done.stderr and "never" not in done.stdout


def test_a_missing_helper_or_controller_is_a_clear_failure_and_fallback_runs_locally(tools: Path) -> None:
    missing = sh(shim_env(None, tools, "wc", JOBNEST_EXEC_HELPER="/nowhere/jobnest"), "wc -l </dev/null")
    assert missing.returncode != 0 and "cannot run the redirect helper /nowhere/jobnest: not found" in missing.stderr
    gone = {"JOBNEST_CONTROLLER": "127.0.0.1:9", "JOBNEST_TOKEN": ADMIN}  # nothing listens on port 9
    started = time.monotonic()
    refused = sh(shim_env(None, tools, "wc", **gone), 'printf "a\\n" | wc -l')
    assert refused.returncode != 0 and "cannot reach the controller" in refused.stderr
    assert "JOBNEST_EXEC_FALLBACK=local" in refused.stderr and time.monotonic() - started < 30
    local = sh(shim_env(None, tools, "wc", JOBNEST_EXEC_FALLBACK="local", **gone), 'printf "a\\nb\\n" | wc -l')
    assert local.returncode == 0 and local.stdout.strip() == "2" and "running wc here" in local.stderr


def test_path_mode_wrappers_run_programs_as_jobs_without_the_shim(running: Running, tmp_path: Path) -> None:
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    made = subprocess.run([HELPER, "exec-shims", str(tmp_path / "shims"), "wc"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert made.returncode == 0 and made.stdout.strip() == str(tmp_path / "shims" / "wc"), made.stderr
    env["PATH"] = f"{tmp_path / 'shims'}:{env['PATH']}"
    done = sh(env, 'printf "a\\nb\\n" | wc -l')
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
    assert [j.name for j in running.client().list()] == ["wc -l"]
    bad = subprocess.run([HELPER, "exec-shims", str(tmp_path / "shims"), "no-such-tool"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "'no-such-tool' is not a program on PATH" in bad.stderr


def test_the_job_runs_in_the_callers_folder_with_only_the_variables_asked_for(running: Running, tools: Path,
                                                                            tmp_path: Path) -> None:
    (tmp_path / "here.txt").write_text("local file\n")
    (tools / "show").write_text('#!/bin/sh\ncat here.txt; echo "[$KEEP][$DROP]"\n')
    (tools / "show").chmod(0o755)
    env = shim_env(running, tools, "show", KEEP="kept", DROP="dropped", JOBNEST_EXEC_ENV="KEEP")
    done = sh(env, "show", cwd=tmp_path)
    assert done.stdout == "local file\n[kept][]\n", done.stderr
    [job] = running.client().list()  # bash ran `show` in its own place: there is no caller to group under
    assert job.name == "show" and job.state == "succeeded" and job.executor == "local"


def test_with_an_image_the_call_runs_in_a_container_that_sees_the_callers_folder(docker_running: Running,
                                                                                  tools: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mounts" / "work"  # under the controller's mount roots
    folder.mkdir(parents=True)
    (folder / "here.txt").write_text("local file\n")
    env = shim_env(docker_running, tools, "cat", JOBNEST_EXEC_IMAGE=BUSYBOX)
    done = sh(env, "cat here.txt", cwd=folder)
    assert done.returncode == 0 and done.stdout == "local file\n", done.stderr
    [job] = docker_running.client().list()
    assert job.executor == "docker" and job.name == "cat here.txt"


def test_a_stopped_caller_cancels_its_job_and_exits_128_plus_the_signal(running: Running, tools: Path) -> None:
    (tools / "slow").write_text('#!/bin/sh\nsleep 30\n')
    caller = subprocess.Popen(["bash", "-c", "slow"], env=shim_env(running, tools, "slow"), stderr=subprocess.PIPE)
    client = running.client()
    job = wait_for(lambda: next((client.job(j.uuid) for j in client.list() if j.state == "running"), None))
    caller.send_signal(signal.SIGTERM)
    assert caller.wait(timeout=30) == 128 + signal.SIGTERM
    assert job.wait(timeout=30).state == "cancelled"


def test_pythons_search_of_path_is_left_alone_until_it_finds_the_program(running: Running, tools: Path,
                                                                         tmp_path: Path) -> None:
    """subprocess tries execve in each folder of PATH: only the path that exists is redirected."""
    env = shim_env(running, tools, "greet")
    env["PATH"] = f"{tmp_path / 'nothing-here'}:{env['PATH']}"
    done = subprocess.run([sys.executable, "-c", "import subprocess; subprocess.run(['greet', 'from python'])"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "from python\n", done.stderr
    assert [j.name for j in calls(running)] == ["greet from python"]


def test_a_script_s_calls_group_under_one_job_that_ends_with_it(running: Running, tools: Path, tmp_path: Path) -> None:
    """Before, each redirected call outside a job was a root job of its own, named only `greet`."""
    env = shim_env(running, tools, "greet,say")
    script = tmp_path / "steps.sh"
    script.write_text("greet one\ngreet two three\nsay four || true\n")
    done = sh(env, f"bash {script}")
    assert done.returncode == 0 and done.stdout == "one\ntwo three\nfour\n", done.stderr
    client = running.client()
    [caller] = [j for j in client.list() if j.executor == "driver"]
    assert caller.name == f"bash {script}"
    assert [(j.name, j.spawned_by_job_uuid) for j in calls(running)] == [
        (name, caller.uuid) for name in ("greet one", "greet two three", "say four")]
    assert client.job(caller.uuid).wait(timeout=30).state == "failed"  # a call of it failed
    tree = subprocess.run([HELPER, "tree", caller.uuid], env={**os.environ, "JOBNEST_CONTROLLER": running.address,
                                                              "JOBNEST_TOKEN": ADMIN}, capture_output=True, text=True)
    assert "greet two three" in tree.stdout and "say four" in tree.stdout, tree


def test_a_reused_call_lays_out_the_files_it_wrote(running: Running, tools: Path, tmp_path: Path) -> None:
    """Before, a reused `gzip -k` did not make reads.fq.gz again, which `make` relies on."""
    (tmp_path / "reads.fq").write_text("@r1\nACGT\n+\nIIII\n" * 100)
    env = shim_env(running, tools, "gzip")
    assert sh(env, "gzip -k reads.fq && echo made", cwd=tmp_path).stdout == "made\n"
    made = (tmp_path / "reads.fq.gz").read_bytes()
    (tmp_path / "reads.fq.gz").unlink()
    again = sh(env, "gzip -k reads.fq && echo made", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert [j.reused for j in calls(running)] == [False, True]
    assert (tmp_path / "reads.fq.gz").read_bytes() == made  # laid out again, the same bytes
