"""EMULATOR tests of the Kubernetes executor: a real controller drives the official `kubernetes`
client against the kmock emulator over real HTTP (tests/kube_emulator.py), and each test plays
the kubelet by setting Pod status and logs. They check the requests made, the mapping of Pod
phases and termination reasons to run states, cancel, 404, 409, watch expiry and re-adoption
after a restart. An emulator is not a cluster: nothing here shows that a Pod runs on Kubernetes
(the opt-in test at the end does, given a KUBECONFIG)."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jobnest
from jobnest.errors import JobnestError
from jobnest_controller.app import Controller
from jobnest_controller.executors.base import Launch
from jobnest_controller.executors.kubernetes import KubernetesExecutor
from jobnest_controller.settings import KubernetesSettings
from jobnest_controller.states import State
from jobnest_controller.store import Kind, Store

from .conftest import BUSYBOX, Running, make_settings, wait_for
from .kube_emulator import KubeEmulator, kube, rbac_pair  # noqa: F401  (kube: the fixture)
from .test_chart import render

NS = "jobs"
ADVERTISE = "jobnest.jobs.svc:7070"  # what Pods would be told; nothing here calls it


def start_controller(home: Path, emulator: KubeEmulator) -> Controller:
    settings = make_settings(home)
    settings.server.advertise = ADVERTISE
    settings.kubernetes = KubernetesSettings(namespace=NS, kubeconfig=str(emulator.kubeconfig(home.parent / "kubeconfig")),
                                             cpu_quota_millis=2000, memory_quota=2**30)
    controller = Controller(settings)
    controller.start()
    return controller


@pytest.fixture
def cluster(kube: KubeEmulator, tmp_path: Path) -> Iterator[tuple[Running, KubeEmulator]]:  # noqa: F811
    controller = start_controller(tmp_path / "home", kube)
    try:
        yield Running(controller), kube
    finally:
        controller.stop(grace=0)


def submit(running: Running, argv: list[str], **options: Any) -> jobnest.Job:
    return running.client().submit(argv, executor="kubernetes", image=BUSYBOX, **options)


def container(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "job", "image": BUSYBOX, "imageID": "", "ready": False, "restartCount": 0, "state": state}


def running_status() -> dict[str, Any]:
    return {"phase": "Running", "containerStatuses": [container({"running": {}})]}


def ended_status(code: int, reason: str = "") -> dict[str, Any]:
    terminated = {"exitCode": code, **({"reason": reason} if reason else {})}
    return {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [container({"terminated": terminated})]}


def pod_of(emulator: KubeEmulator, job: jobnest.Job, attempt: int = 1) -> dict[str, Any]:
    name = f"jobnest-{job.info.run_uuid}-{attempt}"
    return wait_for(lambda: next((p for p in emulator.pods(NS) if p["metadata"]["name"] == name), None))


def verbs_in_order(emulator: KubeEmulator) -> list[str]:
    """Each (resource, verb) the requests needed, in the order first needed."""
    seen: list[str] = []
    for request in emulator.requests:
        pair = rbac_pair(request)
        if pair is not None and "/".join(pair) not in seen:
            seen.append("/".join(pair))
    return seen


def test_a_run_is_a_pod_whose_end_the_emulated_kubelet_decides(cluster: tuple[Running, KubeEmulator]) -> None:
    running, emulator = cluster
    job = submit(running, ["sh", "-c", "echo hi"], cpu=0.25, memory="64Mi")
    pod = pod_of(emulator, job)
    [spec] = pod["spec"]["containers"]
    assert spec["resources"] == {"requests": {"cpu": "250m", "memory": str(64 * 2**20)},
                                 "limits": {"memory": str(64 * 2**20)}}
    assert spec["command"] == ["sh", "-c", "echo hi"] and pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["jobnest.run"] == job.info.run_uuid
    name = pod["metadata"]["name"]
    emulator.set_pod_status(NS, name, running_status())
    emulator.set_pod_log(NS, name, "hi\n")
    wait_for(lambda: job.state == "running")
    emulator.set_pod_status(NS, name, ended_status(0))
    assert job.wait(timeout=20).state == "succeeded" and job.exit_code == 0
    assert job.logs() == "hi\n" and job.info.output  # the log was copied, the (empty) output stored
    wait_for(lambda: not emulator.pods(NS))  # deleted once its end was stored
    assert verbs_in_order(emulator) == ["pods/list", "pods/watch", "pods/create", "pods/log/get", "pods/delete"]
    [create] = [r for r in emulator.requests if r.method == "POST"]
    assert create.path == f"/api/v1/namespaces/{NS}/pods"


@pytest.mark.parametrize("status, state, reason", [
    (ended_status(3), "failed", "exit code 3"),
    (ended_status(137, "OOMKilled"), "failed", "out of memory"),
    ({"phase": "Pending", "containerStatuses": [container({"waiting": {"reason": "ErrImagePull",
                                                                       "message": "pull access denied"}})]},
     "failed", "could not start: ErrImagePull: pull access denied"),
    ({"phase": "Failed", "reason": "Evicted", "message": "the node was low on memory",
      "containerStatuses": [container({"terminated": {"exitCode": 137, "reason": "Error"}})]},
     "failed", "the Pod was evicted: the node was low on memory"),
    ({"phase": "Failed", "reason": "UnexpectedAdmissionError"}, "failed", "the Pod failed: UnexpectedAdmissionError"),
])
def test_pod_phases_and_reasons_become_run_states(cluster: tuple[Running, KubeEmulator], status: dict[str, Any],
                                                  state: str, reason: str) -> None:
    running, emulator = cluster
    job = submit(running, ["false"])
    emulator.set_pod_status(NS, pod_of(emulator, job)["metadata"]["name"], status)
    assert job.wait(timeout=20).state == state and job.info.reason == reason
    wait_for(lambda: not emulator.pods(NS))


def test_out_of_memory_retries_in_a_new_pod_with_more_memory(cluster: tuple[Running, KubeEmulator]) -> None:
    running, emulator = cluster
    job = submit(running, ["eat-memory"], memory="64Mi", retries=1, memory_on_oom=2.0)
    first = pod_of(emulator, job)
    emulator.set_pod_status(NS, first["metadata"]["name"], ended_status(137, "OOMKilled"))
    second = pod_of(emulator, job, attempt=2)
    assert second["spec"]["containers"][0]["resources"]["limits"]["memory"] == str(128 * 2**20)
    emulator.set_pod_status(NS, second["metadata"]["name"], ended_status(0))
    assert job.wait(timeout=20).state == "succeeded"


def test_cancel_deletes_the_pod_and_a_pod_gone_already_is_no_error(cluster: tuple[Running, KubeEmulator]) -> None:
    running, emulator = cluster
    job = submit(running, ["sleep", "1000"])
    name = pod_of(emulator, job)["metadata"]["name"]
    emulator.set_pod_status(NS, name, running_status())
    job.cancel()
    assert job.wait(timeout=20).state == "cancelled"
    [delete] = [r for r in emulator.requests if r.method == "DELETE"]
    assert delete.path.endswith(f"/pods/{name}")
    executor = running.controller.executors["kubernetes"]
    executor.stop({"uuid": job.info.run_uuid, "handle": name}, 0.0)  # 404 now: nothing to do
    assert [r.method for r in emulator.requests].count("DELETE") == 2
    assert job.state == "cancelled"


def test_a_pod_made_before_a_crash_is_adopted_not_refused(kube: KubeEmulator, tmp_path: Path) -> None:  # noqa: F811
    """409 on create: the controller stopped after creating the Pod and before recording it."""
    executor = KubernetesExecutor(str(tmp_path), KubernetesSettings(namespace=NS), "x", api_client=kube.api_client())
    launch = Launch("ab" * 16, "kubernetes", ["true"], {}, "", 100, 0, "ctl:7070", BUSYBOX)
    first, again = executor.start(launch), executor.start(launch)
    assert first.handle == again.handle == f"jobnest-{'ab' * 16}-1" and len(kube.pods(NS)) == 1
    assert [r.method for r in kube.requests] == ["POST", "POST", "GET"]


def test_an_expired_watch_lists_again_and_misses_no_end(cluster: tuple[Running, KubeEmulator]) -> None:
    running, emulator = cluster
    job = submit(running, ["true"])
    name = pod_of(emulator, job)["metadata"]["name"]
    wait_for(lambda: any(r.query.get("watch") for r in emulator.requests))
    lists = lambda: [r for r in emulator.requests if r.method == "GET" and r.path.endswith("/pods")  # noqa: E731
                     and not r.query.get("watch")]
    assert len(lists()) == 1
    emulator.expire_watches()
    emulator.set_pod_status(NS, name, ended_status(0))  # while the watch is being renewed
    assert job.wait(timeout=20).state == "succeeded"
    assert len(lists()) == 2


def test_a_restarted_controller_adopts_its_pods_and_learns_how_they_ended(kube: KubeEmulator,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    controller = start_controller(tmp_path / "home", kube)
    job = submit(Running(controller), ["sleep", "5"])
    name = pod_of(kube, job)["metadata"]["name"]
    kube.set_pod_status(NS, name, running_status())
    wait_for(lambda: job.state == "running")
    controller.stop(grace=0)
    kube.set_pod_log(NS, name, "done while nobody watched\n")
    kube.set_pod_status(NS, name, ended_status(4))
    controller = start_controller(tmp_path / "home", kube)
    try:
        client = Running(controller).client()
        assert client.job(job.uuid).wait(timeout=20).state == "failed"
        assert client.get(job.uuid).exit_code == 4
        assert client.job(job.uuid).logs() == "done while nobody watched\n"
        assert [r.method for r in kube.requests].count("POST") == 1  # adopted, not started again
    finally:
        controller.stop(grace=0)


def test_an_end_the_store_failed_to_record_keeps_its_pod_until_it_is_recorded(
        cluster: tuple[Running, KubeEmulator], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection (the store's write of an end fails once): the Pod must not be deleted
    before its end is stored, or the next pass would find it gone and call the run lost."""
    running, emulator = cluster
    original, failed = Store.transition, []

    def flaky(self: Store, tx: Any, kind: Kind, uuid: str, expected: State, new: State, reason: str,
              **values: Any) -> bool:
        if new is State.SUCCEEDED and not failed:
            failed.append(uuid)
            raise JobnestError("the store is away (injected)")
        return original(self, tx, kind, uuid, expected, new, reason, **values)

    monkeypatch.setattr(Store, "transition", flaky)
    job = submit(running, ["true"])
    emulator.set_pod_status(NS, pod_of(emulator, job)["metadata"]["name"], ended_status(0))
    assert job.wait(timeout=20).state == "succeeded" and failed == [job.info.run_uuid]
    wait_for(lambda: not emulator.pods(NS))


def test_a_pod_is_refused_the_controllers_unix_socket(kube: KubeEmulator, tmp_path: Path) -> None:  # noqa: F811
    executor = KubernetesExecutor(str(tmp_path), KubernetesSettings(namespace=NS), "x", api_client=kube.api_client())
    with pytest.raises(JobnestError, match="--advertise"):
        executor.start(Launch("ab" * 16, "kubernetes", ["true"], {}, "", 100, 0, "unix:///x/jobs.sock", BUSYBOX))
    assert kube.requests == []


def test_an_unreachable_api_leaves_runs_queued_with_the_reason(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    settings.server.advertise = ADVERTISE
    settings.kubernetes = KubernetesSettings(namespace=NS, kubeconfig=str(tmp_path / "missing-kubeconfig"))
    controller = Controller(settings)
    controller.start()
    try:
        job = submit(Running(controller), ["true"])
        wait_for(lambda: "Kubernetes API is unreachable" in job.info.reason)
        assert job.state == "queued"
    finally:
        controller.stop(grace=0)


def test_the_charts_role_grants_exactly_what_the_executor_used(cluster: tuple[Running, KubeEmulator],
                                                              tmp_path: Path) -> None:
    running, emulator = cluster
    done, cancelled = submit(running, ["true"]), submit(running, ["sleep", "100"])
    emulator.set_pod_status(NS, pod_of(emulator, done)["metadata"]["name"], ended_status(0))
    cancelled.cancel()
    done.wait(timeout=20)
    cancelled.wait(timeout=20)
    executor = running.controller.executors["kubernetes"]
    launch = Launch(done.info.run_uuid, "kubernetes", ["true"], {}, "", 100, 0, "ctl:7070", BUSYBOX, attempt=9)
    executor.start(launch)
    executor.start(launch)  # 409: read the Pod instead
    used = emulator.rbac_pairs()
    [role] = [o for (kind, _), o in render().items() if kind == "Role"]
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert used == granted


@pytest.mark.cluster
@pytest.mark.skipif(not os.environ.get("KUBECONFIG"),
                    reason="opt-in: no Kubernetes cluster can run on these machines (nor in CI); set KUBECONFIG")
def test_a_small_pipeline_on_a_real_cluster(tmp_path: Path) -> None:
    """Opt-in, on a real cluster: JOBNEST_TEST_NAMESPACE (default "default") and an image the
    cluster can pull (JOBNEST_TEST_IMAGE, default busybox)."""
    settings = make_settings(tmp_path / "home")
    settings.server.advertise = ADVERTISE  # these jobs do not call back
    settings.kubernetes = KubernetesSettings(namespace=os.environ.get("JOBNEST_TEST_NAMESPACE", "default"),
                                             kubeconfig=os.environ["KUBECONFIG"])
    controller = Controller(settings)
    controller.start()
    try:
        client = Running(controller).client()
        image = os.environ.get("JOBNEST_TEST_IMAGE", "busybox")
        first = client.submit(["sh", "-c", "echo one"], executor="kubernetes", image=image, cpu=0.1)
        second = client.submit(["sh", "-c", "echo two; exit 3"], executor="kubernetes", image=image, cpu=0.1,
                               when=first.succeeded)
        assert second.wait(timeout=300).state == "failed" and second.exit_code == 3
        assert first.logs() == "one\n" and second.logs() == "two\n"
    finally:
        controller.stop(grace=0)
