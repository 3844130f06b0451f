"""The Helm chart (charts/jobnest), checked with real tools: helm 4 (scripts/helm.sh installs it)
lints and renders it, kubernetes-validate checks every rendered object against the OpenAPI schemas
of two Kubernetes versions, and the controller is started from the rendered Deployment. No cluster
can run here, so nothing is applied to one."""

import base64
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernetes.utils import parse_quantity

import jobnest

from .conftest import ADMIN, Running

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / "build" / "helm" / "helm"
CHART = ROOT / "charts" / "jobnest"
NAMESPACE = "batch"
KUBERNETES_VERSIONS = ["1.30", "1.35"]

POSTGRESQL: dict[str, Any] = {
    "store": {"postgresql": {"existingSecret": "jobnest-db", "key": "dsn"}},
    "server": {"adminToken": {"existingSecret": "jobnest-admin", "key": "token"}}}
CUSTOM: dict[str, Any] = {
    "kubernetes": {"namespace": "jobs", "serviceAccount": "runner", "cpuQuota": 2.5, "memoryQuota": 8 * 2**30,
                   "nodeSelector": {"pool": "batch", "example.com/gpu": "none"}},
    "persistence": {"existingClaim": "shared-state"}, "serviceAccount": {"create": False, "name": "ops"},
    "defaultExecutor": "local", "maxUpload": 4096, "server": {"advertise": "jobnest.example.com:443"},
    "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}
EPHEMERAL: dict[str, Any] = {"persistence": {"enabled": False}}
WEB: dict[str, Any] = {"web": {"enabled": True, "port": 9090,
                               "resources": {"requests": {"cpu": "20m", "memory": "64Mi"},
                                             "limits": {"memory": "256Mi"}}}}
VALUE_SETS: dict[str, dict[str, Any]] = {"defaults": {}, "postgresql": POSTGRESQL, "custom": CUSTOM,
                                         "ephemeral": EPHEMERAL, "web": WEB}

POD_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the real helm with `values` as a values file on stdin; the caller checks the outcome."""
    if not HELM.exists():
        pytest.fail(f"no helm at {HELM.relative_to(ROOT)}: run `bash scripts/helm.sh` (make test does)")
    return subprocess.run([str(HELM), *args, "-f", "-"], input=yaml.safe_dump(values or {}),
                          capture_output=True, text=True, timeout=30)


def render(values: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """The chart's objects for these values, by (kind, name)."""
    done = helm("template", "jobnest", str(CHART), "--namespace", NAMESPACE, values=values)
    assert done.returncode == 0, done.stderr
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout) if o}


def containers(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The controller Pod's containers, by name."""
    return {c["name"]: c for c in objects["Deployment", "jobnest"]["spec"]["template"]["spec"]["containers"]}


def controller_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return containers(objects)["controller"]


def service_ports(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Service's ports, by name."""
    return {p["name"]: p for p in objects["Service", "jobnest"]["spec"]["ports"]}


def flags(container: dict[str, Any]) -> dict[str, str]:
    """The container's args as {flag: value}; every flag the chart passes takes a value."""
    args = container["args"]
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    assert len(set(args[::2])) == len(args) // 2, f"a flag is repeated: {args}"
    return dict(zip(args[::2], args[1::2]))


def env_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The container's variables that come from Secrets, as {name: (secret, key)}."""
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", [])}


@pytest.mark.parametrize("values", [{}, POSTGRESQL, WEB], ids=["defaults", "postgresql", "web"])
def test_the_chart_passes_a_strict_lint(values: dict[str, Any]) -> None:
    done = helm("lint", "--strict", str(CHART), values=values)
    assert done.returncode == 0, done.stdout + done.stderr


def test_by_default_the_controller_runs_kubernetes_jobs_in_its_namespace_on_its_own_claim() -> None:
    objects = render()
    container = controller_container(objects)
    deployment = objects["Deployment", "jobnest"]["spec"]
    pvc = objects["PersistentVolumeClaim", "jobnest"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    assert container["image"] == "jobnest/jobnest:latest" and container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["/opt/jobnest/bin/python", "-m", "jobnest_controller"]
    assert list(containers(objects)) == ["controller"]  # the web monitor is off by default
    assert list(service_ports(objects)) == ["grpc"]
    assert flags(container) == {
        "--home": "/var/lib/jobnest", "--listen": "0.0.0.0:7070", "--advertise": f"jobnest.{NAMESPACE}.svc:7070",
        "--executor": "kubernetes", "--docker": "none", "--max-upload": str(2**30),
        "--k8s-namespace": NAMESPACE, "--k8s-pvc": "jobnest", "--k8s-cpu-quota": "8",
        "--k8s-memory-quota": str(32 * 2**30)}
    assert container["volumeMounts"] == [{"name": "state", "mountPath": "/var/lib/jobnest"}]
    assert deployment["template"]["spec"]["volumes"] == [{"name": "state",
                                                          "persistentVolumeClaim": {"claimName": "jobnest"}}]
    assert pvc["accessModes"] == ["ReadWriteMany"] and pvc["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in pvc  # the cluster's default class
    # The admin token never shows in args: it comes from a Secret the chart makes, with a random token.
    assert env_refs(container) == {"JOBNEST_ADMIN_TOKEN": ("jobnest-admin-token", "admin-token")}
    assert len(base64.b64decode(objects["Secret", "jobnest-admin-token"]["data"]["admin-token"])) == 40
    assert deployment["template"]["spec"]["serviceAccountName"] == "jobnest"
    assert ("ServiceAccount", "jobnest") in objects


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_probes_ask_the_grpc_health_service_on_the_service_port(name: str) -> None:
    objects = render({**VALUE_SETS[name], "server": {**VALUE_SETS[name].get("server", {}), "port": 7443}})
    container = controller_container(objects)
    assert container["readinessProbe"]["grpc"] == {"port": 7443}
    assert container["livenessProbe"]["grpc"] == {"port": 7443}
    assert container["ports"] == [{"name": "grpc", "containerPort": 7443, "protocol": "TCP"}]
    port = service_ports(objects)["grpc"]
    assert (port["port"], port["targetPort"]) == (7443, "grpc")
    assert objects["Service", "jobnest"]["spec"]["type"] == "ClusterIP"
    assert flags(container)["--listen"] == "0.0.0.0:7443"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_role_grants_exactly_the_pod_calls_of_the_kubernetes_executor(name: str) -> None:
    objects = render(VALUE_SETS[name])
    jobs_namespace = flags(controller_container(objects))["--k8s-namespace"]
    role, binding = objects["Role", "jobnest"], objects["RoleBinding", "jobnest"]
    assert role["rules"] == POD_RULES
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == jobs_namespace
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "jobnest"}
    account = objects["Deployment", "jobnest"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert [k for k in objects if k[0] in ("ClusterRole", "ClusterRoleBinding")] == []


def test_postgresql_and_the_admin_token_come_from_existing_secrets() -> None:
    objects = render(POSTGRESQL)
    container = controller_container(objects)
    assert env_refs(container) == {"JOBNEST_ADMIN_TOKEN": ("jobnest-admin", "token"),
                                   "JOBNEST_STORE": ("jobnest-db", "dsn")}
    assert "--store" not in flags(container) and "--admin-token" not in flags(container)
    assert [k for k in objects if k[0] == "Secret"] == []


def test_a_store_url_without_secrets_is_passed_as_a_flag() -> None:
    container = controller_container(render({"store": {"url": "postgresql://db.internal/jobnest"}}))
    assert flags(container)["--store"] == "postgresql://db.internal/jobnest"
    assert "JOBNEST_STORE" not in env_refs(container)


def test_custom_values_reach_the_controller_flags_and_the_pod() -> None:
    objects = render(CUSTOM)
    container = controller_container(objects)
    assert flags(container) == {
        "--home": "/var/lib/jobnest", "--listen": "0.0.0.0:7070", "--advertise": "jobnest.example.com:443",
        "--executor": "local", "--docker": "none", "--max-upload": "4096", "--k8s-namespace": "jobs",
        "--k8s-service-account": "runner",  # no --k8s-pvc: the claim is not visible in namespace "jobs"
        "--k8s-node-selector": "example.com/gpu=none,pool=batch", "--k8s-cpu-quota": "2.5",
        "--k8s-memory-quota": str(8 * 2**30)}
    pod = objects["Deployment", "jobnest"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "state", "persistentVolumeClaim": {"claimName": "shared-state"}}]
    assert pod["serviceAccountName"] == "ops"
    assert container["resources"] == CUSTOM["resources"]
    # The existing claim and service account are used, not made.
    assert [k for k in objects if k[0] in ("PersistentVolumeClaim", "ServiceAccount")] == []


def test_a_fractional_cpu_quota_given_with_set_reaches_the_flag() -> None:
    # --set gives fractions as strings; the schema accepts them like numbers.
    done = helm("template", "jobnest", str(CHART), "--set", "kubernetes.cpuQuota=0.25",
                "--show-only", "templates/deployment.yaml")
    assert done.returncode == 0, done.stderr
    deployment = yaml.safe_load(done.stdout)
    assert flags(controller_container({("Deployment", "jobnest"): deployment}))["--k8s-cpu-quota"] == "0.25"


def test_without_persistence_the_home_is_an_empty_dir_and_jobs_get_no_claim() -> None:
    objects = render(EPHEMERAL)
    assert "--k8s-pvc" not in flags(controller_container(objects))
    assert objects["Deployment", "jobnest"]["spec"]["template"]["spec"]["volumes"] == [
        {"name": "state", "emptyDir": {}}]
    assert [k for k in objects if k[0] == "PersistentVolumeClaim"] == []


def test_the_web_monitor_runs_beside_the_controller_on_its_port_with_no_token_of_its_own() -> None:
    objects = render({**WEB, "server": {"port": 7443}})
    controller, web = controller_container(objects), containers(objects)["web"]
    assert web["image"] == controller["image"] and web["imagePullPolicy"] == controller["imagePullPolicy"]
    # It reaches the controller at the controller's own port, over the Pod's loopback.
    [grpc_port] = controller["ports"]
    assert [*web["command"], *web["args"]] == [
        "/opt/jobnest/bin/jobnest", "--controller", f"127.0.0.1:{grpc_port['containerPort']}",
        "web", "--host", "0.0.0.0", "--port", "9090"]
    assert web["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert web["readinessProbe"]["httpGet"] == web["livenessProbe"]["httpGet"] == {"path": "/healthz",
                                                                                   "port": "http"}
    port = service_ports(objects)["http"]
    assert (port["port"], port["targetPort"]) == (9090, "http")
    assert web["resources"] == WEB["web"]["resources"]
    # Bound beyond loopback, `jobnest web` makes each user log in: no admin token, no secret, no
    # state folder, and no service links (the Pod has none) to bring JOBNEST_* variables.
    assert [k for k in web if k in ("env", "envFrom", "volumeMounts")] == []
    assert "admin-token" not in yaml.safe_dump(web)
    assert objects["Deployment", "jobnest"]["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert env_refs(controller) == {"JOBNEST_ADMIN_TOKEN": ("jobnest-admin-token", "admin-token")}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_object_is_valid_kubernetes(name: str, version: str) -> None:
    for (kind, object_name), obj in render(VALUE_SETS[name]).items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{object_name} is not valid for Kubernetes {version}: {e.message} at {list(e.path)}")
        # What the OpenAPI schemas leave unchecked: name and label syntax, quantities.
        assert DNS_SUBDOMAIN.match(object_name), f"{kind} name {object_name!r}"
        for key, value in obj["metadata"].get("labels", {}).items():
            assert LABEL_VALUE.match(value), f"{kind}/{object_name} label {key}={value!r}"
        if kind == "PersistentVolumeClaim":
            assert parse_quantity(obj["spec"]["resources"]["requests"]["storage"]) == 10 * 2**30
        if kind == "Deployment":
            for container in containers({("Deployment", "jobnest"): obj}).values():
                resources = container.get("resources", {})
                for quantity in [*resources.get("requests", {}).values(), *resources.get("limits", {}).values()]:
                    assert parse_quantity(quantity) > 0


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"kubernetes": {"cpuQuota": -1}}, "/kubernetes/cpuQuota"),
    ({"kubernetes": {"cpuQuota": 0}}, "/kubernetes/cpuQuota"),
    ({"kubernetes": {"memoryQuota": "lots"}}, "/kubernetes/memoryQuota"),
    ({"defaultExecutor": "docker"}, "/defaultExecutor"),
    ({"image": {"repository": ""}}, "/image/repository"),
    ({"image": {"repository": None}}, "missing property 'repository'"),
    ({"server": {"port": "grpc"}}, "/server/port"),
    ({"persistence": {"size": "ten gigs"}}, "/persistence/size"),
    ({"kubernetes": {"nodeSelector": {"pool": "a,b"}}}, "/kubernetes/nodeSelector/pool"),
    ({"executor": "kubernetes"}, "additional properties 'executor' not allowed"),
    ({"store": {"url": "sqlite:////x.db", "postgresql": {"existingSecret": "db"}}},  # one or the other
     "/store/postgresql/existingSecret"),
    ({"web": {"port": "http"}}, "'/web/port': got string, want integer"),
    ({"web": {"port": 0}}, "'/web/port': minimum"),
    ({"web": {"port": 65536}}, "'/web/port': maximum"),
    ({"web": {"enabled": "yes"}}, "/web/enabled"),
    ({"web": {"resources": {"requests": {"cpu": "lots"}}}}, "/web/resources/requests/cpu"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_refused_by_lint_and_template_naming_the_value(values: dict[str, Any], message: str) -> None:
    for command in (["lint", "--strict"], ["template", "jobnest"]):
        done = helm(*command, str(CHART), values=values)
        assert done.returncode != 0, f"helm {command[0]} accepted {values}"
        assert message in done.stdout + done.stderr


def test_a_web_port_that_is_the_server_port_is_refused_naming_the_value() -> None:
    # Two containers of one Pod cannot bind one port. Only a template can compare two values, and
    # `helm lint` merely logs a template's fail: template and install refuse them.
    for command in (["template", "jobnest"], ["install", "jobnest", "--dry-run=client"]):
        done = helm(*command, str(CHART), values={"web": {"enabled": True, "port": 7070}})
        assert done.returncode != 0, f"helm {command[0]} accepted web.port == server.port"
        assert "web.port: 7070 is the server's port" in done.stderr


def test_the_install_notes_tell_how_to_reach_the_controller_and_run_a_pipeline() -> None:
    done = helm("install", "jobnest", str(CHART), "--namespace", NAMESPACE, "--dry-run=client", values={})
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    for text in (f"kubectl --namespace {NAMESPACE} port-forward svc/jobnest 7070:7070",
                 "export JOBNEST_CONTROLLER=localhost:7070",
                 "get secret jobnest-admin-token -o jsonpath='{.data.admin-token}' | base64 -d",
                 "jobnest ls", "jobnest tree",
                 "jobnest submit --executor kubernetes --image jobnest/jobnest:latest examples/pipeline.py"):
        assert text in notes
    assert "web monitor" not in notes  # off by default


def test_with_the_web_monitor_the_notes_tell_how_to_open_it_and_log_in() -> None:
    done = helm("install", "jobnest", str(CHART), "--namespace", NAMESPACE, "--dry-run=client", values=WEB)
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    for text in ("web monitor", f"kubectl --namespace {NAMESPACE} port-forward svc/jobnest 9090:9090",
                 "open http://127.0.0.1:9090 and log in with a user token", "jobnest token create NAME"):
        assert text in notes


def any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return any_free_port()


@pytest.fixture
def rendered_controller(free_port: int,
                        tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any], str]]:
    """The controller started locally as the rendered Deployment starts it: its command (with this
    venv's python), args (with a temp home) and env (secrets resolved from the rendered Secret)."""
    objects = render({"server": {"port": free_port}})
    container = controller_container(objects)
    secrets = {name: {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}
               for (kind, name), obj in objects.items() if kind == "Secret"}
    env = {name: secrets[secret][key] for name, (secret, key) in env_refs(container).items()}
    args = container["args"]
    args[args.index("--home") + 1] = str(tmp_path / "home")
    command = [sys.executable, *container["command"][1:], *args]
    log = tmp_path / "controller.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
                                   stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield process, container, env["JOBNEST_ADMIN_TOKEN"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(log.read_text())  # shown by pytest when the test failed


def test_the_rendered_deployment_starts_a_controller_that_answers_its_probe(
        rendered_controller: tuple[subprocess.Popen[bytes], dict[str, Any], str], free_port: int) -> None:
    process, container, token = rendered_controller
    assert container["readinessProbe"]["grpc"]["port"] == free_port
    address = f"127.0.0.1:{free_port}"
    deadline = time.monotonic() + 20
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, f"the controller exited with {process.returncode}"
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, f"no health answer on {address} within 20 s"
                time.sleep(0.1)
    assert status == health_pb2.HealthCheckResponse.SERVING
    # The token from the chart's Secret is the admin token; another is refused.
    assert jobnest.Client(address, token, driver=False).status()["pid"] == process.pid
    with pytest.raises(jobnest.Unauthenticated):
        jobnest.Client(address, "not-the-token", driver=False).status()


def test_the_rendered_web_container_serves_the_monitor_behind_a_login(running: Running, tmp_path: Path) -> None:
    """The web container's command, run with this venv's python beside a real controller: its probe
    path answers, and on 0.0.0.0 every page asks for a token first."""
    web_port = any_free_port()
    objects = render({"server": {"port": running.controller.port}, "web": {"enabled": True, "port": web_port}})
    web = containers(objects)["web"]
    command = [sys.executable, "-c", "from jobnest._cli import main; main()", *web["args"]]
    process = subprocess.Popen(command, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        probe = f"http://127.0.0.1:{web_port}{web['readinessProbe']['httpGet']['path']}"
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(probe, timeout=1) as response:
                    assert response.read() == b"ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no answer on {probe} within 20 s"
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/") as response:
            assert response.url.endswith("/login?next=/")
        login = urllib.parse.urlencode({"token": ADMIN, "next": "/"}).encode()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"http://127.0.0.1:{web_port}/login", data=login) as response:
            assert response.status == 200 and b'"page": "tree"' in response.read()
        with opener.open(f"http://127.0.0.1:{web_port}/api/jobs") as response:
            assert json.load(response)["jobs"] == []
    finally:
        process.terminate()
        process.wait(timeout=10)
