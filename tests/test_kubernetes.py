"""The Kubernetes executor's Pods, checked against the real Kubernetes schemas (no cluster: the
Pods are built, not run; the emulator tests in test_kubernetes_emulator.py run them)."""

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes.utils import parse_quantity

from jobnest.errors import JobnestError
from jobnest_controller.executors.base import Launch
from jobnest_controller.executors.kubernetes import KubernetesExecutor
from jobnest_controller.settings import KubernetesSettings

from .conftest import require_engine

VERSIONS = ("1.30", "1.35")


def launch(home: Path, **fields: object) -> Launch:
    values: dict[str, object] = dict(
        run_uuid="ab" * 16, node="kubernetes", argv=["python3", "{inputs.code}", "{inputs.data}/x.csv", "{output}"],
        env={"JOBNEST_TOKEN": "secret", "JOBNEST_JOB": "cd" * 16}, cwd="", cpu_millis=250, memory=256 * 2**20,
        controller="jobnest.jobs.svc:7070", image="jobnest/jobnest:latest")
    values.update(fields)
    return Launch(**values)  # type: ignore[arg-type]


def test_a_pod_asks_for_the_share_and_mounts_its_data_from_the_claim(tmp_path: Path) -> None:
    settings = KubernetesSettings(namespace="jobs", pvc="jobnest-data", service_account="runner",
                                  node_selector={"pool": "batch"})
    executor = KubernetesExecutor(str(tmp_path), settings, controller_id="/var/lib/jobnest")
    code = tmp_path / "data" / "trees" / ("1" * 64)
    data = tmp_path / "data" / "trees" / ("2" * 64)
    for folder in (code, data):
        folder.mkdir(parents=True)
    (code / "steps.py").write_text("print()")
    program = tmp_path / "runs" / ("ab" * 16) / "program"
    pod = executor.pod(launch(tmp_path, inputs={"code": str(code / "steps.py"), "data": str(data)},
                              program=str(program)))
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    [container] = pod["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": str(256 * 2**20)},
                                      "limits": {"memory": str(256 * 2**20)}}
    assert parse_quantity(container["resources"]["requests"]["cpu"]) == parse_quantity("0.25")
    assert container["command"] == ["python3", "/jobnest/inputs/code/steps.py", "/jobnest/inputs/data/x.csv",
                                    "/jobnest/out"]
    assert {m["mountPath"]: (m["subPath"], m.get("readOnly", False)) for m in container["volumeMounts"]} == {
        "/jobnest/out": (f"runs/{'ab' * 16}/out", False),
        "/jobnest/program": (f"runs/{'ab' * 16}/program", False),
        "/jobnest/inputs/code": (f"data/trees/{'1' * 64}", True),
        "/jobnest/inputs/data": (f"data/trees/{'2' * 64}", True),
    }
    assert container["workingDir"] == "/jobnest/program"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["JOBNEST_CONTROLLER"] == "jobnest.jobs.svc:7070" and env["JOBNEST_OUTPUT"] == "/jobnest/out"
    assert env["JOBNEST_TOKEN"] == "secret"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["serviceAccountName"] == "runner"
    assert spec["nodeSelector"] == {"pool": "batch"} and spec["automountServiceAccountToken"] is False
    assert spec["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "jobnest-data"}}]
    labels = pod["metadata"]["labels"]
    assert labels["jobnest.run"] == "ab" * 16 and len(labels["jobnest.controller"]) <= 63
    assert pod["metadata"]["name"] == f"jobnest-{'ab' * 16}-1" and pod["metadata"]["namespace"] == "jobs"


def test_without_a_claim_the_output_is_scratch_and_inputs_are_refused(tmp_path: Path) -> None:
    executor = KubernetesExecutor(str(tmp_path), KubernetesSettings(namespace="jobs"), controller_id="x")
    pod = executor.pod(launch(tmp_path, argv=["echo", "hi"], memory=0))
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    [container] = pod["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "250m"}}
    assert pod["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    with pytest.raises(JobnestError, match="set --k8s-pvc"):
        executor.pod(launch(tmp_path, inputs={"data": str(tmp_path)}))


def test_an_image_is_required_and_taken_as_given(tmp_path: Path) -> None:
    executor = KubernetesExecutor(str(tmp_path), KubernetesSettings(namespace="jobs"), controller_id="x")
    assert executor.resolve_image("repo/app@sha256:" + "0" * 64) == "repo/app@sha256:" + "0" * 64
    with pytest.raises(JobnestError, match="required"):
        executor.resolve_image("")


def test_a_pod_names_the_digest_its_registry_gives(tmp_path: Path, registry: str) -> None:
    """The tag as the registry has it at submit is what the signature and the Pod name: a tag
    moved later does not change what a queued run pulls. An image no registry knows (loaded onto
    the nodes) is used as named."""
    require_engine()  # to push the image
    subprocess.run(["docker", "tag", "jobnest/busybox:latest", f"{registry}/jobnest/k8s:1"], check=True)
    pushed = subprocess.run(["docker", "push", f"{registry}/jobnest/k8s:1"], check=True, capture_output=True,
                            text=True).stdout
    subprocess.run(["docker", "rmi", f"{registry}/jobnest/k8s:1"], check=True, capture_output=True)
    digest = next(word for word in pushed.split() if word.startswith("sha256:"))
    executor = KubernetesExecutor(str(tmp_path), KubernetesSettings(namespace="jobs"), controller_id="c")
    image = executor.resolve_image(f"{registry}/jobnest/k8s:1")
    assert image == f"{registry}/jobnest/k8s@{digest}"
    [container] = executor.pod(launch(tmp_path, image=image))["spec"]["containers"]
    assert container["image"] == image
    assert executor.resolve_image("jobnest/jobnest:latest") == "jobnest/jobnest:latest"
