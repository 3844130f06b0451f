"""The GA4GH TES API of `jobnest web`, served by a real `jobnest web` process against a real
controller, driven by real TES clients: py-tes, and Snakemake with snakemake-executor-plugin-tes."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tes

from .conftest import ADMIN, BUSYBOX, Running, wait_for
from .test_web import Web

DONE = ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED")


@pytest.fixture
def web(running: Running, tmp_path: Path) -> Iterator[Web]:
    """`jobnest web` on loopback, acting with the admin token; file:// reaches the test's folder."""
    w = Web(running, ADMIN, "--tes-file-root", str(tmp_path))
    yield w
    w.stop()


def call(url: str, method: str = "GET", body: Any = None, token: str = "", content_type: str = "application/json",
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A TES call over plain HTTP: its status and JSON answer."""
    headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def finished(client: tes.HTTPClient, task_id: str) -> tes.Task:
    return client.wait(task_id, timeout=90)


def test_service_info_answers_on_every_prefix(web: Web, tmp_path: Path) -> None:
    info = tes.HTTPClient(web.url).get_service_info()  # py-tes 0.4 asks /v1/tasks/service-info
    assert info.name == "jobnest" and f"file://{os.path.realpath(tmp_path)}" in info.storage
    for prefix in ("/v1", "/ga4gh/tes/v1"):
        status, body = call(f"{web.url}{prefix}/service-info")
        assert status == 200 and body["name"] == "jobnest", body
        assert body["type"]["group"] == "org.ga4gh" and body["type"]["artifact"] == "tes"
        assert body["type"]["version"].startswith("1.") and "job:" in body["storage"]


def files_task(tmp_path: Path, image: str = "") -> tuple[tes.Task, Path]:
    """A task with a file:// input, a content input, env, a workdir, and two file:// outputs."""
    (tmp_path / "in.txt").write_text("from a file\n")
    result = tmp_path / "result"
    task = tes.Task(
        name="files", tags={"project": "tes-test"},
        inputs=[tes.Input(url=f"file://{tmp_path / 'in.txt'}", path="/data/in.txt"),
                tes.Input(content="inline words\n", path="/data/sub/note.txt")],
        outputs=[tes.Output(url=f"file://{result / 'out.txt'}", path="/work/out.txt"),
                 tes.Output(url=f"file://{result / 'where'}", path="/work/where.txt")],
        resources=tes.Resources(cpu_cores=1, ram_gb=0.1),
        executors=[tes.Executor(image=image, command=["cat", "/data/in.txt", "/data/sub/note.txt"],
                                stdout="/work/out.txt"),
                   tes.Executor(image=image, command=["sh", "-c", 'echo "$GREETING from $(basename "$PWD")"'],
                                workdir="/work", env={"GREETING": "hello"}, stdout="/work/where.txt")])
    return task, result


def test_a_task_places_its_inputs_runs_its_executors_and_writes_its_outputs(running: Running, web: Web,
                                                                            tmp_path: Path) -> None:
    client = tes.HTTPClient(web.url)
    task, result = files_task(tmp_path)
    task_id = client.create_task(task)
    assert finished(client, task_id).state == "COMPLETE"
    assert (result / "out.txt").read_text() == "from a file\ninline words\n"
    assert (result / "where").read_text() == "hello from work\n"
    full = client.get_task(task_id, view="FULL")
    assert full.name == "files" and full.tags == {"project": "tes-test"}
    assert [log.exit_code for log in full.logs[0].logs] == [0, 0]
    assert {o.url for o in full.logs[0].outputs} == {f"file://{result / 'out.txt'}", f"file://{result / 'where'}"}
    assert full.inputs[1].content == "inline words\n" and client.get_task(task_id, "BASIC").inputs[1].content is None
    job = running.client().get(task_id)  # a task is a job: the TES paths stayed inside its run folder
    assert job.state == "succeeded" and job.cpu == 1.0 and job.memory == 10**8
    assert (Path(job.output_dir).parent / "tes" / "work" / "out.txt").read_text() == "from a file\ninline words\n"


def test_a_task_reads_another_tasks_output_by_its_job_url(web: Web, tmp_path: Path) -> None:
    client = tes.HTTPClient(web.url)
    first = client.create_task(tes.Task(
        outputs=[tes.Output(url="jobnest:", path="/made/dir", type="DIRECTORY")],
        executors=[tes.Executor(image="", command=["mkdir", "-p", "/made/dir"]),
                   tes.Executor(image="", command=["echo", "made first"], stdout="/made/dir/a.txt")]))
    assert finished(client, first).state == "COMPLETE"
    kept = client.get_task(first, "BASIC").logs[0].outputs
    assert [(o.url, o.path) for o in kept] == [(f"job:{first}/tes-outputs/made/dir/a.txt", "/made/dir/a.txt")]
    second = client.create_task(tes.Task(
        inputs=[tes.Input(url=kept[0].url, path="/in/a.txt")],
        outputs=[tes.Output(url=f"file://{tmp_path / 'copy.txt'}", path="/in/a.txt")],
        executors=[tes.Executor(image="", command=["true"])]))
    assert finished(client, second).state == "COMPLETE"
    assert (tmp_path / "copy.txt").read_text() == "made first\n"


def test_a_task_runs_in_a_container_with_the_paths_as_given(docker_running: Running, tmp_path: Path) -> None:
    w = Web(docker_running, ADMIN, "--tes-file-root", str(tmp_path))
    try:
        client = tes.HTTPClient(w.url)
        task, result = files_task(tmp_path, BUSYBOX)
        task.executors.append(tes.Executor(image=BUSYBOX, command=["sh", "-c", "cat /data/in.txt >> /work/out.txt"]))
        task_id = client.create_task(task)
        assert finished(client, task_id).state == "COMPLETE", client.get_task(task_id, "FULL").logs
        assert (result / "out.txt").read_text() == "from a file\ninline words\nfrom a file\n"
        assert docker_running.client().get(task_id).executor == "docker"
    finally:
        w.stop()


def test_a_failing_executor_is_an_executor_error_with_its_exit_code(web: Web) -> None:
    client = tes.HTTPClient(web.url)
    task_id = client.create_task(tes.Task(executors=[
        tes.Executor(image="", command=["true"]),
        tes.Executor(image="", command=["sh", "-c", "echo trouble >&2; exit 3"]),
        tes.Executor(image="", command=["echo", "never"])]))
    assert finished(client, task_id).state == "EXECUTOR_ERROR"
    log = client.get_task(task_id, "FULL").logs[0]
    assert [e.exit_code for e in log.logs] == [0, 3]  # the third never ran
    assert "trouble" in log.logs[-1].stderr and "never" not in (log.logs[-1].stdout or "")
    assert any("exit code 3" in line for line in log.system_logs)


def test_a_missing_output_is_a_system_error(web: Web, tmp_path: Path) -> None:
    client = tes.HTTPClient(web.url)
    task_id = client.create_task(tes.Task(outputs=[tes.Output(url=f"file://{tmp_path / 'x'}", path="/never/made")],
                                          executors=[tes.Executor(image="", command=["true"])]))
    assert finished(client, task_id).state == "SYSTEM_ERROR"
    assert "/never/made was not made" in " ".join(client.get_task(task_id, "FULL").logs[0].system_logs)


def test_file_urls_reach_only_the_folders_given(running: Running, web: Web, tmp_path: Path) -> None:
    """As the user running `jobnest web`, whom no token stands for: none by default, and no link
    inside a root leads out of it."""
    (tmp_path / "out").symlink_to("/etc")
    for task, field in [({"inputs": [{"url": "file:///etc/hostname", "path": "/in"}]}, "inputs[0].url"),
                        ({"inputs": [{"url": f"file://{tmp_path}/out/hostname", "path": "/in"}]}, "inputs[0].url"),
                        ({"outputs": [{"url": f"file://{tmp_path}/out/x", "path": "/o"}]}, "outputs[0].url"),
                        ({"inputs": [{"url": None, "content": "x", "path": "/in"}],
                          "outputs": [{"url": "file:///etc/x", "path": "/o"}]}, "outputs[0].url")]:
        status, body = call(f"{web.url}/v1/tasks", "POST", {**GOOD, **task})
        assert status == 403 and body["field"] == field, body
    plain = Web(running, ADMIN)
    try:
        (tmp_path / "in.txt").write_text("mine\n")
        status, body = call(f"{plain.url}/v1/tasks", "POST",
                            {**GOOD, "inputs": [{"url": f"file://{tmp_path}/in.txt", "path": "/in"}]})
        assert status == 403 and "--tes-file-root" in body["error"], body
    finally:
        plain.stop()
    assert list(running.client().list()) == []


def test_a_listing_answers_complete_once_the_outputs_are_written(web: Web, tmp_path: Path) -> None:
    client = tes.HTTPClient(web.url)
    task_id = client.create_task(tes.Task(name="lists", outputs=[tes.Output(url=f"file://{tmp_path / 'o.txt'}",
                                                                            path="/o.txt")],
                                          executors=[tes.Executor(image="", command=["echo", "hi"], stdout="/o.txt")]))
    wait_for(lambda: call(f"{web.url}/v1/tasks?name_prefix=lists")[1]["tasks"][0]["state"] in DONE, timeout=60)
    status, body = call(f"{web.url}/v1/tasks?name_prefix=lists&state=COMPLETE")
    assert [t["id"] for t in body["tasks"]] == [task_id] and (tmp_path / "o.txt").read_text() == "hi\n"


def test_a_cancelled_task_is_canceled(web: Web) -> None:
    client = tes.HTTPClient(web.url)
    task_id = client.create_task(tes.Task(executors=[tes.Executor(image="", command=["sleep", "300"])],
                                          resources=tes.Resources(cpu_cores=1)))
    wait_for(lambda: client.get_task(task_id).state == "RUNNING", timeout=30)
    client.cancel_task(task_id)
    assert finished(client, task_id).state == "CANCELED"


def test_listing_filters_by_name_and_state_and_pages(web: Web) -> None:
    client = tes.HTTPClient(web.url)
    ids = [client.create_task(tes.Task(name=f"batch-{i}", executors=[tes.Executor(image="", command=["echo", str(i)])]))
           for i in range(3)]
    failing = client.create_task(tes.Task(name="batch-bad", executors=[tes.Executor(image="", command=["false"])]))
    client.create_task(tes.Task(name="other", executors=[tes.Executor(image="", command=["true"])]))
    for task_id in [*ids, failing]:
        finished(client, task_id)
    status, page = call(f"{web.url}/ga4gh/tes/v1/tasks?name_prefix=batch-&page_size=3&view=BASIC")
    assert status == 200 and len(page["tasks"]) == 3 and page["next_page_token"], page
    assert page["tasks"][0]["executors"][0]["command"] == ["false"]  # newest first
    status, rest = call(f"{web.url}/v1/tasks?name_prefix=batch-&page_size=3&page_token={page['next_page_token']}")
    assert [t["id"] for t in page["tasks"] + rest["tasks"]] == [failing, *reversed(ids)]
    assert "next_page_token" not in rest
    assert rest["tasks"][0] == {"id": ids[0], "state": "COMPLETE"}  # MINIMAL by default
    status, errors = call(f"{web.url}/v1/tasks?state=EXECUTOR_ERROR&name_prefix=batch")
    assert [t["id"] for t in errors["tasks"]] == [failing]
    listed = client.list_tasks(view="FULL")  # py-tes reads every task of the FULL view
    assert {t.id for t in listed.tasks} >= {*ids, failing} and all(t.logs for t in listed.tasks)
    status, body = call(f"{web.url}/v1/tasks?state=BOGUS")
    assert status == 400 and body["field"] == "state"
    status, body = call(f"{web.url}/v1/tasks?page_token=no-such-task")
    assert status == 400 and body["field"] == "page_token"
    status, body = call(f"{web.url}/v1/tasks?page_size=5000")
    assert status == 400 and body["field"] == "page_size"


def test_a_full_listing_pages_at_most_a_hundred(running: Running, web: Web) -> None:
    """Each task of the FULL view costs calls to the controller: a page holds fewer than asked."""
    held = running.client().submit(["sleep", "300"], cpu=2)  # the node is full: the tasks stay queued
    for i in range(101):
        assert call(f"{web.url}/v1/tasks", "POST", {**GOOD, "name": f"many-{i}"})[0] == 200
    status, page = call(f"{web.url}/v1/tasks?view=FULL&page_size=500&name_prefix=many-")
    assert status == 200 and len(page["tasks"]) == 100 and page["next_page_token"], len(page["tasks"])
    held.cancel()


def test_a_bearer_token_acts_as_its_user(running: Running, web: Web) -> None:
    alice = running.client().create_token("alice")
    admins = tes.HTTPClient(web.url).create_task(tes.Task(name="admins", executors=[tes.Executor(image="",
                                                                                                 command=["true"])]))
    hers = tes.HTTPClient(web.url, token=alice)
    mine = hers.create_task(tes.Task(name="alices", executors=[tes.Executor(image="", command=["true"])]))
    assert finished(hers, mine).state == "COMPLETE" and running.client().get(mine).owner == "alice"
    assert [t.id for t in hers.list_tasks().tasks] == [mine]
    status, _ = call(f"{web.url}/v1/tasks/{admins}", token=alice)
    assert status in (403, 404)
    status, body = call(f"{web.url}/v1/tasks", token="not-a-token")
    assert status == 401, body
    login = Web(running, "", "--login")
    try:
        status, body = call(f"{login.url}/v1/tasks")
        assert status == 401 and body["field"] == "authorization"
        status, body = call(f"{login.url}/v1/tasks", token=alice)
        assert status == 200 and [t["id"] for t in body["tasks"]] == [mine]
        status, body = call(f"{login.url}/v1/tasks", "POST", {"executors": [{"image": "", "command": ["cat"]}],
                                                             "inputs": [{"url": "file:///etc/passwd", "path": "/p"}]},
                            token=alice)  # with a login, no file of this host unless under a root
        assert status == 403 and body["field"] == "inputs[0].url", body
    finally:
        login.stop()


GOOD = {"executors": [{"image": "", "command": ["true"]}]}


@pytest.mark.parametrize(("change", "field"), [
    ({"executors": []}, "executors"),
    ({"executors": [{"image": "", "command": []}]}, "executors[0].command"),
    ({"executors": [{"image": "", "command": ["true"]}, {"image": BUSYBOX, "command": ["true"]}]},
     "executors[1].image"),
    ({"executors": [{"image": "", "command": ["true"], "workdir": "relative"}]}, "executors[0].workdir"),
    ({"executors": [{"image": "", "command": ["true"], "env": {"A B": "x"}}]}, "executors[0].env"),
    ({"inputs": [{"url": "file:///etc/hostname", "path": "relative"}]}, "inputs[0].path"),
    ({"inputs": [{"url": "s3://bucket/key", "path": "/in"}]}, "inputs[0].url"),
    ({"inputs": [{"path": "/in"}]}, "inputs[0].url"),
    ({"inputs": [{"url": "file://ROOT/no/such/file", "path": "/in"}]}, "inputs[0].url"),
    ({"inputs": [{"url": "data:not-a-digest", "path": "/in"}]}, "inputs[0].url"),
    ({"inputs": [{"url": "file:///etc/hostname", "path": "/in"}], "outputs": "no"}, "outputs"),
    ({"outputs": [{"url": "http://example.org/x", "path": "/out"}]}, "outputs[0].url"),
    ({"resources": {"cpu_cores": -1}}, "resources.cpu_cores"),
    ({"resources": {"ram_gb": 10**6}}, "resources.ram_gb"),
    ({"resources": {"ram_gb": 1e300}}, "resources.ram_gb"),
    ({"executors": [{"image": "", "command": ["true"], "ignore_error": "no"}]}, "executors[0].ignore_error"),
    ({"inputs": None, "outputs": [{"url": "s3://b/k", "path": "/o"}]}, "outputs[0].url"),
    ({"inputs": [{"content": "x" * 200_000, "path": "/in"}]}, "inputs[0].content"),
    ({"tags": {"k": 5}}, "tags"),
    ({"tags": {"k": "v" * 300}}, "tags"),
])
def test_bad_input_is_refused_naming_the_field_and_submits_nothing(running: Running, web: Web,
                                                                   change: dict[str, Any], field: str,
                                                                   tmp_path: Path) -> None:
    change = json.loads(json.dumps(change).replace("ROOT", str(tmp_path)))  # the folder file:// may reach
    status, body = call(f"{web.url}/v1/tasks", "POST", {**GOOD, **change})
    assert status == 400 and body["field"] == field and body["error"], body
    assert list(running.client().list()) == []


def test_a_post_must_be_json_so_no_other_site_can_send_one(running: Running, web: Web) -> None:
    status, body = call(f"{web.url}/v1/tasks", "POST", json.dumps(GOOD).encode(), content_type="text/plain")
    assert status == 403, body
    status, body = call(f"{web.url}/v1/tasks", "POST", GOOD, headers={"Origin": "http://evil.example"})
    assert status == 403, body
    status, body = call(f"{web.url}/v1/tasks", "POST", b"{not json")
    assert status == 400 and body["field"] == "body"
    assert call(f"{web.url}/v1/tasks/no-such-task")[0] == 404
    assert list(running.client().list()) == []
    status, body = call(f"{web.url}/v1/tasks", "POST", json.dumps(GOOD).encode(), token=ADMIN, content_type="")
    assert status == 200 and running.client().get(body["id"]).state  # a bearer token is no browser's


SNAKEFILE = """
rule all:
    input: "counts/total.txt"

rule shout:
    input: "words/{name}.txt"
    output: "loud/{name}.txt"
    shell: "tr a-z A-Z < {input} > {output}"

rule total:
    input: expand("loud/{name}.txt", name=["one", "two"])
    output: "counts/total.txt"
    shell: "cat {input} > {output}; wc -l < {output} >> {output}"
"""

# snakemake-executor-plugin-tes 0.1.3 starts every job with `mkdir /tmp/conda && cd /tmp` and a
# `pip install` of the storage plugins, as for a fresh container; on the local executor this
# script drops both, so each job runs in its own folder with the plugins this host has.
JOBSCRIPT = """#!/bin/bash
# properties = {properties}
job=$(cat <<'JOBNEST_END'
{exec_job}
JOBNEST_END
)
eval "$(printf '%s\\n' "$job" | sed -e 's|^mkdir /tmp/conda && cd /tmp && ||' -e 's|pip install --target [^&]*&& ||')"
"""


def test_snakemake_runs_a_workflow_through_tes(web: Web, tmp_path: Path) -> None:
    work, store = tmp_path / "work", tmp_path / "store"
    (store / "words").mkdir(parents=True)
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    (work / "jobscript.sh").write_text(JOBSCRIPT)
    (store / "words" / "one.txt").write_text("one\n")
    (store / "words" / "two.txt").write_text("two\n")
    # The plugin prints $GITHUB_WORKSPACE/funnel.log when a task fails (a leftover of its own CI).
    (tmp_path / "funnel.log").write_text("a task failed: the tasks' logs follow the assertion\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GITHUB_WORKSPACE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--executor", "tes", "--tes-url", web.url, "--jobs", "2",
         "--default-storage-provider", "fs", "--default-storage-prefix", str(store), "--container-image", "local",
         "--jobscript", "jobscript.sh", "--envvars", "PATH", "--seconds-between-status-checks", "1"],
        cwd=work, env=env, capture_output=True, text=True, timeout=400)
    logs = [t.as_dict() for t in tes.HTTPClient(web.url).list_tasks(view="FULL").tasks]  # what failed, if any
    assert result.returncode == 0, f"{result.stderr[-5000:]}\n{json.dumps(logs, default=str)[-5000:]}"
    assert (store / "loud" / "one.txt").read_text() == "ONE\n"
    assert (store / "counts" / "total.txt").read_text() == "ONE\nTWO\n2\n"
    listed = tes.HTTPClient(web.url).list_tasks().tasks
    assert len(listed) == 3 and {t.state for t in listed} == {"COMPLETE"}
