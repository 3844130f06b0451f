"""The Kubernetes EMULATOR (tests/kube_emulator.py), checked with the official `kubernetes` client.

This is an emulator, not a cluster: kmock keeps Pods in memory and serves them over real HTTP on
127.0.0.1. Nothing schedules or runs a Pod, there is no kubelet (the tests set status and logs),
deletion is immediate, patches are JSON merge patches, field selectors are ignored and nothing is
validated beyond a name. Label selectors are honoured. Passing here never means "works on Kubernetes";
it means the executor's client calls, watches and error paths behave as the API server's do.
"""

import json
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch

from tests.kube_emulator import KubeEmulator, KubeRequest, kube, rbac_pair  # noqa: F401  (kube: the fixture)

NS = "jobs"
SELECTOR = "jobnest.controller=abc"


def pod(name: str, controller: str = "abc") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"jobnest.controller": controller}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}


@pytest.fixture
def api(kube: KubeEmulator) -> CoreV1Api:
    return CoreV1Api(kube.api_client())


OOM_KILLED = {"phase": "Failed", "containerStatuses": [
    {"name": "main", "ready": False, "restartCount": 0, "image": "busybox", "imageID": "",
     "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}


def test_a_created_pod_is_pending_and_can_be_read_listed_and_deleted(kube: KubeEmulator, api: CoreV1Api) -> None:
    created = api.create_namespaced_pod(NS, pod("p1"))
    assert created.metadata.namespace == NS and created.metadata.uid and created.status.phase == "Pending"
    assert api.read_namespaced_pod("p1", NS).metadata.resource_version == created.metadata.resource_version
    listed = api.list_namespaced_pod(NS, label_selector=SELECTOR)
    assert [p.metadata.name for p in listed.items] == ["p1"]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)
    assert [p["metadata"]["name"] for p in kube.pods(NS)] == ["p1"]

    api.delete_namespaced_pod("p1", NS, grace_period_seconds=0)
    assert api.list_namespaced_pod(NS).items == [] and kube.pods() == []


def test_reading_deleting_or_logging_a_missing_pod_is_404(api: CoreV1Api) -> None:
    for call in (lambda: api.read_namespaced_pod("nope", NS),
                 lambda: api.delete_namespaced_pod("nope", NS, grace_period_seconds=30),
                 lambda: api.read_namespaced_pod_log("nope", NS)):
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == 404 and json.loads(caught.value.body)["reason"] == "NotFound"


def test_creating_a_pod_whose_name_exists_is_409(api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_pod(NS, pod("p1"))
    assert caught.value.status == 409 and json.loads(caught.value.body)["reason"] == "AlreadyExists"
    api.create_namespaced_pod("elsewhere", pod("p1"))  # names are per namespace


def test_a_pod_may_be_named_by_generate_name_but_needs_a_name_somehow(api: CoreV1Api) -> None:
    body = pod("")
    body["metadata"] = {"generateName": "run-"}
    assert api.create_namespaced_pod(NS, body).metadata.name.startswith("run-")
    body["metadata"] = {}
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_pod(NS, body)
    assert caught.value.status == 422


def test_label_selectors_filter_lists_and_watches(api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("mine"))
    api.create_namespaced_pod(NS, pod("theirs", controller="xyz"))
    names = lambda selector: [p.metadata.name for p in api.list_namespaced_pod(NS, label_selector=selector).items]
    assert names(SELECTOR) == ["mine"]
    assert names("jobnest.controller!=abc") == ["theirs"]
    assert names("jobnest.controller in (abc, xyz)") == ["mine", "theirs"]
    assert names("jobnest.controller,!other") == ["mine", "theirs"]
    assert names("") == ["mine", "theirs"]
    watch = Watch()
    for event in watch.stream(api.list_namespaced_pod, NS, label_selector="jobnest.controller=xyz", timeout_seconds=5):
        assert event["object"].metadata.name == "theirs"
        watch.stop()


def test_a_status_set_by_the_test_is_read_back_under_a_new_resource_version(kube: KubeEmulator,
                                                                          api: CoreV1Api) -> None:
    before = api.create_namespaced_pod(NS, pod("p1")).metadata.resource_version
    version = kube.set_pod_status(NS, "p1", OOM_KILLED)
    read = api.read_namespaced_pod("p1", NS)
    assert read.metadata.resource_version == version and int(version) > int(before)
    [status] = read.status.container_statuses
    assert read.status.phase == "Failed" and status.state.terminated.reason == "OOMKilled"
    assert status.state.terminated.exit_code == 137

    kube.set_pod_status(NS, "p1", {"phase": "Pending", "containerStatuses": [
        {"name": "main", "ready": False, "restartCount": 0, "image": "busybox", "imageID": "",
         "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}}}]})
    assert api.read_namespaced_pod("p1", NS).status.container_statuses[0].state.waiting.reason == "ErrImagePull"


def test_an_open_watch_receives_modified_and_deleted_events_as_they_happen(kube: KubeEmulator,
                                                                          api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    seen: list[tuple[str, str | None, str]] = []
    watch = Watch()
    for event in watch.stream(api.list_namespaced_pod, NS, label_selector=SELECTOR, timeout_seconds=10):
        seen.append((event["type"], event["object"].status.phase, event["object"].metadata.resource_version))
        if event["type"] == "ADDED":  # the watch is open: now play the kubelet, then delete
            kube.set_pod_status(NS, "p1", {"phase": "Running"})
        elif event["type"] == "MODIFIED":
            api.delete_namespaced_pod("p1", NS, grace_period_seconds=0)
        else:
            watch.stop()
    assert [(kind, phase) for kind, phase, _ in seen] == [("ADDED", "Pending"), ("MODIFIED", "Running"),
                                                         ("DELETED", "Running")]
    versions = [int(version) for _, _, version in seen]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert watch.resource_version == seen[-1][2]


def test_a_watch_resumed_from_a_list_version_replays_the_changes_since(kube: KubeEmulator,
                                                                       api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("old"))
    version = api.list_namespaced_pod(NS, label_selector=SELECTOR).metadata.resource_version
    api.create_namespaced_pod(NS, pod("new"))
    kube.set_pod_status(NS, "old", {"phase": "Succeeded"})
    api.delete_namespaced_pod("old", NS)
    events = []
    watch = Watch()
    for event in watch.stream(api.list_namespaced_pod, NS, label_selector=SELECTOR, resource_version=version,
                              timeout_seconds=10):
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == 3:
            watch.stop()
    assert events == [("ADDED", "new"), ("MODIFIED", "old"), ("DELETED", "old")]


def test_a_watch_from_an_expired_version_raises_410_and_a_relist_recovers(kube: KubeEmulator,
                                                                         api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    stale = api.list_namespaced_pod(NS, label_selector=SELECTOR).metadata.resource_version
    kube.expire_watches()
    for limit in ({"timeout_seconds": 10}, {}):  # with a timeout Watch raises at once; without, after a retry
        with pytest.raises(ApiException) as caught:
            for _ in Watch().stream(api.list_namespaced_pod, NS, label_selector=SELECTOR, resource_version=stale,
                                    **limit):
                pytest.fail("a stale watch must not yield events")
        assert caught.value.status == 410 and "Expired" in caught.value.reason

    fresh = api.list_namespaced_pod(NS, label_selector=SELECTOR).metadata.resource_version
    kube.set_pod_status(NS, "p1", {"phase": "Running"})
    watch = Watch()
    for event in watch.stream(api.list_namespaced_pod, NS, label_selector=SELECTOR, resource_version=fresh,
                              timeout_seconds=10):
        assert (event["type"], event["object"].status.phase) == ("MODIFIED", "Running")
        watch.stop()


def test_an_open_watch_gets_410_when_watches_expire(kube: KubeEmulator, api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    with pytest.raises(ApiException) as caught:
        for event in Watch().stream(api.list_namespaced_pod, NS, timeout_seconds=10):
            assert event["type"] == "ADDED"
            kube.expire_watches()
    assert caught.value.status == 410


def test_bookmarks_carry_the_current_version_to_watches_that_allow_them(kube: KubeEmulator,
                                                                       api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    api.create_namespaced_pod(NS, pod("other", controller="xyz"))  # moves the version, filtered out
    version = api.list_namespaced_pod(NS).metadata.resource_version
    watch = Watch()
    types = []
    for event in watch.stream(api.list_namespaced_pod, NS, label_selector=SELECTOR, allow_watch_bookmarks=True,
                              timeout_seconds=10):
        types.append(event["type"])
        if event["type"] == "ADDED":
            kube.send_bookmarks()
        else:
            watch.stop()
    assert types == ["ADDED", "BOOKMARK"] and watch.resource_version == version


def test_a_watch_ends_after_its_timeout_with_a_last_bookmark(kube: KubeEmulator, api: CoreV1Api) -> None:
    version = api.list_namespaced_pod(NS).metadata.resource_version
    events = list(Watch().stream(api.list_namespaced_pod, NS, resource_version=version,
                                 allow_watch_bookmarks=True, timeout_seconds=1))
    assert [(e["type"], e["raw_object"]["metadata"]["resourceVersion"]) for e in events] == [("BOOKMARK", version)]


def test_the_log_endpoint_returns_the_text_the_test_set(kube: KubeEmulator, api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    assert api.read_namespaced_pod_log("p1", NS) == ""
    kube.set_pod_log(NS, "p1", "one\ntwo\nthree\n")
    assert api.read_namespaced_pod_log("p1", NS) == "one\ntwo\nthree\n"
    assert api.read_namespaced_pod_log("p1", NS, tail_lines=2) == "two\nthree\n"
    raw = api.read_namespaced_pod_log("p1", NS, follow=False, _preload_content=False)
    assert raw.data == b"one\ntwo\nthree\n" and raw.headers["Content-Type"].startswith("text/plain")


def test_following_a_log_streams_new_text_until_the_pod_ends(kube: KubeEmulator, api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    kube.set_pod_status(NS, "p1", {"phase": "Running"})
    kube.set_pod_log(NS, "p1", "started\n")
    response = api.read_namespaced_pod_log("p1", NS, follow=True, _preload_content=False)
    chunks = response.stream(amt=None)
    assert next(chunks) == b"started\n"
    kube.append_pod_log(NS, "p1", "working\n")
    assert next(chunks) == b"working\n"
    kube.set_pod_status(NS, "p1", {"phase": "Succeeded"})
    assert list(chunks) == []  # the stream ends with the container, as the kubelet's does


def test_every_request_is_logged_and_maps_to_the_rbac_it_needs(kube: KubeEmulator, api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    api.read_namespaced_pod("p1", NS)
    version = api.list_namespaced_pod(NS, label_selector=SELECTOR).metadata.resource_version
    watch = Watch()
    for _ in watch.stream(api.list_namespaced_pod, NS, label_selector=SELECTOR, timeout_seconds=10):
        watch.stop()
    api.patch_namespaced_pod_status("p1", NS, {"status": {"phase": "Running"}})
    api.read_namespaced_pod_log("p1", NS, follow=False, _preload_content=False).data
    api.delete_namespaced_pod("p1", NS, grace_period_seconds=5)

    pods = f"/api/v1/namespaces/{NS}/pods"
    assert [(r.method, r.path) for r in kube.requests] == [
        ("POST", pods), ("GET", f"{pods}/p1"), ("GET", pods), ("GET", pods), ("PATCH", f"{pods}/p1/status"),
        ("GET", f"{pods}/p1/log"), ("DELETE", f"{pods}/p1")]
    watch_request = kube.requests[3]
    assert watch_request.query == {"watch": "true", "labelSelector": SELECTOR, "timeoutSeconds": "10"}
    assert kube.requests[-1].query == {"gracePeriodSeconds": "5"}
    assert version and kube.rbac_pairs() == {
        ("pods", "create"), ("pods", "get"), ("pods", "list"), ("pods", "watch"),
        ("pods/status", "patch"), ("pods/log", "get"), ("pods", "delete")}


@pytest.mark.parametrize(("method", "path", "query", "pair"), [
    ("GET", "/api/v1/namespaces/jobs/pods", {"watch": "1"}, ("pods", "watch")),
    ("GET", "/api/v1/namespaces/jobs/pods", {"watch": "false"}, ("pods", "list")),
    ("GET", "/api/v1/pods", {}, ("pods", "list")),
    ("GET", "/api/v1/namespaces/jobs", {}, ("namespaces", "get")),
    ("DELETE", "/api/v1/namespaces/jobs/pods", {}, ("pods", "deletecollection")),
    ("POST", "/apis/batch/v1/namespaces/jobs/jobs", {}, ("jobs", "create")),
    ("GET", "/api/v1", {}, None),
    ("GET", "/version", {}, None),
])
def test_rbac_pairs_follow_the_api_servers_verbs(method: str, path: str, query: dict[str, str],
                                                 pair: tuple[str, str] | None) -> None:
    assert rbac_pair(KubeRequest(method, path, query)) == pair


def test_watch_1_is_a_watch_as_for_the_api_server(kube: KubeEmulator, api: CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod("p1"))
    with urllib.request.urlopen(f"{kube.url}/api/v1/namespaces/{NS}/pods?watch=1&timeoutSeconds=10",
                                timeout=10) as stream:
        assert json.loads(stream.readline())["type"] == "ADDED"
    assert ("pods", "watch") in kube.rbac_pairs()


def test_core_group_discovery_names_pods_as_the_api_server_does(api: CoreV1Api) -> None:
    resources = api.get_api_resources()
    assert resources.group_version == "v1"
    [pods] = [r for r in resources.resources if r.name == "pods"]
    assert pods.kind == "Pod" and pods.namespaced and "watch" in pods.verbs


def test_the_kubeconfig_points_clients_at_the_emulator(kube: KubeEmulator, tmp_path: Path) -> None:
    path = kube.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    api = CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(path)))
    api.create_namespaced_pod(NS, pod("p1"))
    assert [p.metadata.name for p in api.list_namespaced_pod(NS).items] == ["p1"]


def test_a_reaction_added_with_kmocks_dsl_overrides_the_emulation_to_inject_errors(kube: KubeEmulator,
                                                                                  api: CoreV1Api) -> None:
    kube.server["post v1/pods"] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "no"}
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_pod(NS, pod("p1"))
    assert caught.value.status == 403 and kube.pods() == []  # the emulator never saw the create
