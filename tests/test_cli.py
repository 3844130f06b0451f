"""The `jobnest` command against a real controller, as a user would type it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ADMIN, Running


def cli(running: Running, *args: str, token: str = ADMIN, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": token}
    return subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_run_streams_output_and_exits_with_the_jobs_code(running: Running, tmp_path: Path) -> None:
    result = cli(running, "run", "--cpu", "0.5", "--", "sh", "-c", "echo hello; echo oops >&2; pwd; exit 7")
    assert result.returncode == 7
    [job] = running.client().list()
    assert result.stdout.splitlines() == ["hello", job.output_dir]  # where every job runs by default
    assert "oops" in result.stderr


def test_run_a_missing_program_fails_cleanly(running: Running) -> None:
    result = cli(running, "run", "--", "no-such-program-anywhere")
    assert result.returncode == 127
    assert "not found" in result.stderr


def test_listing_verbs_and_json(running: Running) -> None:
    uuid = cli(running, "run", "-d", "--name", "greet", "--", "echo", "hi").stdout.strip()
    running.client().job(uuid).wait(timeout=20)
    listed = json.loads(cli(running, "ls", "--json").stdout)
    assert [j["name"] for j in listed] == ["greet"] and listed[0]["state"] == "succeeded"
    assert "greet" in cli(running, "ls").stdout
    tree = cli(running, "tree", uuid[:8])
    assert tree.returncode == 0 and "✔ greet" in tree.stdout and "1 jobs: 1 ran, 0 reused" in tree.stdout
    assert json.loads(cli(running, "tree", uuid, "--json").stdout)[0]["uuid"] == uuid
    show = json.loads(cli(running, "show", uuid[:8], "--json").stdout)
    assert show["exit_code"] == 0 and show["argv"] == ["echo", "hi"]
    assert cli(running, "logs", uuid).stdout == "hi\n"
    why = json.loads(cli(running, "why", uuid, "--json").stdout)
    assert why["reused"] is False and "no earlier run" in why["explanation"]
    status = json.loads(cli(running, "status", "--json").stdout)
    assert status["running"] and status["runs"] == {"succeeded": 1}


def test_tree_of_the_last_roots_shows_each_job_once(running: Running) -> None:
    """Two driver runs, the second reusing the first's child: the first tree still has one child."""
    for _ in range(2):
        with running.client(driver=True) as client:
            client.submit(["echo", "same"], name="child").wait(timeout=20)
    tree = cli(running, "tree").stdout
    assert tree.count("✔ child") == 2 and tree.count("reused run") == 1, tree


def test_cancel_and_errors(running: Running) -> None:
    uuid = cli(running, "run", "-d", "--", "sleep", "60").stdout.strip()
    result = cli(running, "cancel", uuid)
    assert result.stdout.strip() == "cancelled 1 job(s)"
    running.client().job(uuid).wait(timeout=20)
    missing = cli(running, "show", "f" * 32)
    assert missing.returncode == 1 and missing.stderr.startswith("jobnest: uuid: no job")
    bad = cli(running, "ls", token="wrong-token-value")
    assert bad.returncode == 1 and "token not recognised" in bad.stderr


def test_token_create_ls_revoke(running: Running) -> None:
    token = cli(running, "token", "create", "dana", "--expires-in", "2d").stdout.strip()
    assert cli(running, "ls", "--json", token=token).returncode == 0
    [listed] = json.loads(cli(running, "token", "ls", "--json").stdout)
    assert listed["name"] == "dana" and 2 * 86400 - 60 < listed["expires_at"] - listed["created_at"] <= 2 * 86400
    assert "dana" in cli(running, "token", "ls").stdout and token not in cli(running, "token", "ls").stdout
    bad = cli(running, "token", "create", "erin", "--expires-in", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    assert cli(running, "token", "revoke", "dana").returncode == 0
    assert "revoked" in cli(running, "ls", token=token).stderr


def test_download_fetches_a_jobs_output_and_why_names_the_inputs(running: Running, tmp_path: Path) -> None:
    client = running.client()
    made = client.submit(["sh", "-c", "echo $1 >{output}/value", "-", "one"])
    read = client.submit(["cat", "{inputs.v}/value"], inputs={"v": made.output}, name="reader").wait(timeout=20)
    result = cli(running, "download", made.uuid[:8], str(tmp_path / "got"))
    assert result.returncode == 0 and (tmp_path / "got" / "value").read_text() == "one\n"
    other = client.submit(["sh", "-c", "echo $1 >{output}/value", "-", "two"])
    again = client.submit(["cat", "{inputs.v}/value"], inputs={"v": other.output}, name="reader").wait(timeout=20)
    assert read.logs() == "one\n" and again.logs() == "two\n"
    why = cli(running, "why", again.uuid).stdout
    assert f"differs from run {read.info.run_uuid} in inputs" in why and "≠ inputs" in why
    (tmp_path / "in.txt").write_text("uploaded\n")
    result = cli(running, "run", "--input", f"x={tmp_path / 'in.txt'}", "--", "cat", "{inputs.x}")
    assert result.returncode == 0 and result.stdout == "uploaded\n", result.stderr
    bad = cli(running, "run", "--input", "x", "--", "true")
    assert bad.returncode == 2 and "--input" in bad.stderr and "NAME=PATH" in bad.stderr
    gone = cli(running, "run", "--input", f"x={tmp_path / 'nowhere'}", "--", "true")
    assert gone.returncode != 0 and "inputs['x']" in gone.stderr and "does not exist" in gone.stderr
    failed = cli(running, "download", client.submit(["false"]).uuid, str(tmp_path / "none"))
    assert failed.returncode != 0 and "it has no output" in failed.stderr
