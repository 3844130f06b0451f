"""The Kubernetes executor: each run is a Pod in one namespace, placed by kube-scheduler.

jobnest keeps the queue and admission: a cluster quota (the cpu and memory of the runs in
flight) is this executor's one node. A Pod asks for the run's cpu share as a request (0.25 ->
250m) and its memory as request and limit, has `restartPolicy: Never`, labels naming the run and
the controller, and mounts its output, inputs and program from the PersistentVolumeClaim that
holds the controller's home, so a path means the same on both sides.

One watch on the controller's Pods (by label) tells each change at once. It resumes from the
last resourceVersion and lists again when that has expired (410 Gone); the first list after a
restart finds the runs' Pods again. Pod logs (stdout and stderr, merged by Kubernetes) are copied
into the run's work dir as they come. It talks to the API with the official `kubernetes` client,
imported here and only here, and uses exactly these calls: pods create, get, list, watch and
delete, and pods/log get (the Helm chart's Role grants those and nothing else).
"""

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobnest.errors import InvalidSpec, JobnestError, Unavailable

from .. import registry
from ..scheduler import Node
from ..settings import KubernetesSettings
from .base import Exited, Launch, Started, expand

log = logging.getLogger(__name__)
RUN_LABEL = "jobnest.run"
CONTROLLER_LABEL = "jobnest.controller"
OUTPUT = "/jobnest/out"
INPUTS = "/jobnest/inputs"
PROGRAM = "/jobnest/program"
PIN_FOR = 60.0  # seconds an image's registry digest is taken as known
DATA_VOLUME = "data"
KILL_GRACE = 5  # seconds a cancelled Pod gets between SIGTERM and SIGKILL
RETRY_DOWN = 2.0  # seconds before an unreachable API is tried again
WATCH_SECONDS = 60  # a watch is renewed this often, from where it left off
# A Pod waiting for these never starts: the run fails, saying why.
CANNOT_START = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                "CreateContainerConfigError", "CreateContainerError"}


class KubernetesExecutor:
    name = "kubernetes"
    slow_starts = True

    def __init__(self, home: str, settings: KubernetesSettings, controller_id: str, api_client: Any = None) -> None:
        try:
            import kubernetes
        except ImportError:
            raise JobnestError("the kubernetes executor needs the `kubernetes` package: "
                               "pip install 'jobnest[kubernetes]'") from None
        self._k8s = kubernetes
        self.home = Path(home)  # the claim's root: what Pods mount is below it
        self.root = self.home / "runs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.namespace = settings.namespace
        # A label value: 63 characters at most, so a digest of the controller's identity.
        self.controller_id = hashlib.sha256(controller_id.encode()).hexdigest()[:16]
        self.selector = f"{CONTROLLER_LABEL}={self.controller_id}"
        self._api_client = api_client
        self._api: Any = None
        self._lock = threading.Lock()
        self._pods: dict[str, Any] = {}  # Pod name -> the Pod as last seen (a V1Pod)
        self._made: dict[str, float] = {}  # Pod name -> when this executor created it
        self._synced = False  # the first list is in: a Pod missing from _pods is not there
        self._down: tuple[str, float] | None = None  # why the API is unreachable, and since when
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()
        self._logs: dict[str, threading.Thread] = {}
        self._deleting: set[str] = set()
        self._ended_pods: list[str] = []  # Pods whose end the last pass recorded, to delete
        self._pins: dict[str, tuple[str, float]] = {}  # image -> (what it names, when asked)
        self.notify: Callable[[], None] = lambda: None

    # -- the API -------------------------------------------------------------------------------

    def _core(self) -> Any:
        if self._api is None:
            client, config = self._k8s.client, self._k8s.config
            api_client = self._api_client
            if api_client is None and self.settings.kubeconfig:
                api_client = config.new_client_from_config(config_file=self.settings.kubeconfig)
            elif api_client is None:
                try:
                    config.load_incluster_config()
                    api_client = client.ApiClient()
                except config.ConfigException:
                    api_client = config.new_client_from_config()
            self._api = client.CoreV1Api(api_client)
        return self._api

    def _failed(self, error: Exception) -> None:
        if self._down is None:
            log.warning("the Kubernetes API is unreachable: %s", error)
        self._down = (f"waiting: the Kubernetes API is unreachable: {_brief(error)}", time.monotonic())

    def close(self) -> None:
        self._closed.set()

    # -- nodes ---------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """The cluster quota, as one node, while the API answers."""
        with self._lock:  # gRPC threads ask too
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="k8s-watch", daemon=True)
                self._watcher.start()
        if self._down is not None or not self._synced:
            return []
        return [Node("kubernetes", self.settings.cpu_quota_millis, self.settings.memory_quota)]

    def why_no_nodes(self) -> str:
        if self._down is not None:
            return self._down[0]
        return "waiting: the Kubernetes API has not answered yet"

    def tidy(self) -> None:
        """Delete the Pods of runs whose end was just stored (one that could not be deleted is
        tried again next time)."""
        self._ended_pods = [name for name in self._ended_pods if not self._delete(name)]

    def resolve_image(self, image: str) -> str:
        """The digest its registry gives for the image now (`name@sha256:...`), which the Pod then
        names, so the signature and the Pod mean the same content; the name as given where no
        registry answers (an image loaded onto the nodes, or a registry that wants credentials)."""
        if not image:
            raise InvalidSpec("required by the kubernetes executor")
        known = self._pins.get(image)
        if known is not None and time.monotonic() - known[1] < PIN_FOR:
            return known[0]
        try:
            found = registry.pinned(image)
        except (OSError, ValueError, KeyError) as e:
            log.info("image %s is used as named: its registry does not say what it names (%s)", image, e)
            found = image
        self._pins[image] = (found, time.monotonic())
        return found

    def workdir(self, run_uuid: str) -> str:
        return str(self.root / run_uuid)

    # -- the watch -----------------------------------------------------------------------------

    def _watch(self) -> None:
        """List the controller's Pods, then follow their changes; list again whenever the watch
        has expired or the API was away."""
        version = ""
        while not self._closed.is_set():
            try:
                api = self._core()
                if not version:
                    asked = time.monotonic()
                    listed = api.list_namespaced_pod(self.namespace, label_selector=self.selector)
                    with self._lock:  # a Pod made while the list was under way is kept: the watch follows it
                        made_since = {n: p for n, p in self._pods.items() if self._made.get(n, 0.0) >= asked}
                        self._pods = made_since | {p.metadata.name: p for p in listed.items}
                    version = listed.metadata.resource_version
                    self._synced, self._down = True, None
                    self.notify()
                stream = self._k8s.watch.Watch().stream(
                    api.list_namespaced_pod, self.namespace, label_selector=self.selector,
                    resource_version=version, timeout_seconds=WATCH_SECONDS)
                for event in stream:
                    self._down = None
                    pod = event["object"]
                    version = pod.metadata.resource_version or version
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._pods.pop(pod.metadata.name, None)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._pods[pod.metadata.name] = pod
                    self.notify()
                    if self._closed.is_set():
                        return
            except self._k8s.client.exceptions.ApiException as e:
                version = ""  # list afresh: on 410 our place in the history is gone, else the API was away
                if e.status != 410:
                    self._failed(e)
                    self._closed.wait(RETRY_DOWN)
            except Exception as e:  # cannot connect, or no configuration to connect with
                self._failed(e)
                version = ""
                self._closed.wait(RETRY_DOWN)

    # -- runs ----------------------------------------------------------------------------------

    def pod(self, launch: Launch) -> dict[str, Any]:
        """The Pod that runs `launch`, as the API takes it."""
        workdir = Path(self.workdir(launch.run_uuid))
        mounts: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        if self.settings.pvc:
            mounts.append({"name": DATA_VOLUME, "mountPath": OUTPUT, "subPath": self._below_home(workdir / "out")})
            if launch.program:
                mounts.append({"name": DATA_VOLUME, "mountPath": PROGRAM,  # the run's own copy, writable
                               "subPath": self._below_home(Path(launch.program))})
            for name, path in launch.inputs.items():
                host = Path(path)
                folder = host if host.is_dir() else host.parent  # a one-file upload: its folder
                mounts.append({"name": DATA_VOLUME, "mountPath": f"{INPUTS}/{name}", "readOnly": True,
                               "subPath": self._below_home(folder)})
                seen[name] = f"{INPUTS}/{name}" + (f"/{host.name}" if folder != host else "")
        elif launch.inputs or launch.program:
            raise JobnestError("inputs and programs reach Pods through a PersistentVolumeClaim: set --k8s-pvc")
        env = {**launch.env, "JOBNEST_OUTPUT": OUTPUT, "JOBNEST_CONTROLLER": launch.controller}
        resources: dict[str, dict[str, str]] = {"requests": {"cpu": f"{launch.cpu_millis}m"}}
        if launch.memory:
            resources["requests"]["memory"] = resources.setdefault("limits", {})["memory"] = str(launch.memory)
        container = {
            # Images are loaded onto nodes as often as pulled: a `:latest` must not force a pull.
            "name": "job", "image": launch.image, "imagePullPolicy": "IfNotPresent",
            "command": expand(launch.argv, seen, OUTPUT),
            "env": [{"name": k, "value": v} for k, v in env.items()], "resources": resources,
            "volumeMounts": mounts,
        }
        if launch.cwd or launch.program:
            container["workingDir"] = launch.cwd or PROGRAM
        spec: dict[str, Any] = {
            "restartPolicy": "Never", "containers": [container],
            "automountServiceAccountToken": False,  # a job talks to jobnest with its token, not to Kubernetes
        }
        if self.settings.pvc:
            spec["volumes"] = [{"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": self.settings.pvc}}]
        else:
            spec["volumes"] = [{"name": DATA_VOLUME, "emptyDir": {}}]
            container["volumeMounts"] = [{"name": DATA_VOLUME, "mountPath": OUTPUT}]
        if self.settings.service_account:
            spec["serviceAccountName"] = self.settings.service_account
        if self.settings.node_selector:
            spec["nodeSelector"] = dict(self.settings.node_selector)
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": _pod_name(launch.run_uuid, launch.attempt), "namespace": self.namespace,
                         "labels": {RUN_LABEL: launch.run_uuid, CONTROLLER_LABEL: self.controller_id,
                                    "app.kubernetes.io/managed-by": "jobnest"}},
            "spec": spec,
        }

    def _below_home(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.home))
        except ValueError:
            raise JobnestError(f"{path} is not on the claim, which holds {self.home}") from None

    def start(self, launch: Launch) -> Started:
        if launch.controller.startswith("unix://"):
            raise JobnestError("a Pod cannot reach the controller's unix socket: serve TCP and --advertise "
                               "an address Pods reach")
        (Path(self.workdir(launch.run_uuid)) / "out").mkdir(parents=True, exist_ok=True)
        body = self.pod(launch)
        ApiException = self._k8s.client.exceptions.ApiException
        try:
            created = self._core().create_namespaced_pod(self.namespace, body)
        except ApiException as e:
            if e.status == 409:  # made before the controller stopped: it is this run's
                created = self._core().read_namespaced_pod(body["metadata"]["name"], self.namespace)
            elif e.status >= 500 or e.status == 429:
                raise Unavailable(f"the Kubernetes API could not take the Pod now: {_brief(e)}") from e
            else:  # refused: a bad image name, a quota of the namespace, ...
                raise JobnestError(f"Kubernetes refused the Pod: {_brief(e)}") from e
        except Exception as e:  # the run waits; the watch tells when the API is back
            raise Unavailable(f"the Kubernetes API is unreachable: {_brief(e)}") from e
        with self._lock:
            self._made[created.metadata.name] = time.monotonic()
            self._pods.setdefault(created.metadata.name, created)
        return Started(0, self.workdir(launch.run_uuid), False, body["metadata"]["name"])

    def poll(self, run: dict[str, Any]) -> Exited | None:
        if not self._synced:
            return None  # cannot tell yet
        uuid = run["uuid"]
        name = self._pod_of(run)
        with self._lock:
            pod = self._pods.get(name)
        if pod is None:
            self._deleting.discard(uuid)
            self._logs.pop(uuid, None)
            with self._lock:
                self._made.pop(name, None)
            if not run["handle"]:
                return Exited(None, "the controller stopped before the run started", started=False)
            return Exited(None, "lost: its Pod is gone")
        phase = pod.status.phase if pod.status else None
        state = _container_state(pod)
        waiting = state.waiting if state else None
        if phase == "Pending" and waiting is not None and waiting.reason in CANNOT_START:
            self._end(run)
            return Exited(None, f"could not start: {waiting.reason}: {waiting.message or ''}".rstrip(": "))
        if phase not in ("Succeeded", "Failed"):
            if phase == "Running" and uuid not in self._logs:
                self._copy_logs(run, follow=True)
            return None
        if uuid not in self._logs:
            self._copy_logs(run, follow=False)  # ended while nobody watched: all of it, now
        self._logs.pop(uuid).join(timeout=5)
        self._end(run)
        terminated = state.terminated if state else None
        code = terminated.exit_code if terminated else None
        if pod.status.reason == "Evicted":
            return Exited(code, f"the Pod was evicted: {pod.status.message or ''}".rstrip(": "))
        if terminated is not None and terminated.reason == "OOMKilled":
            return Exited(code, "out of memory")
        if code is None:
            return Exited(None, f"the Pod failed: {pod.status.reason or 'no exit code'}")
        return Exited(code, f"exit code {code}")

    @staticmethod
    def _pod_of(run: dict[str, Any]) -> str:
        """The name of a run's Pod: one per attempt, so a retry never meets the last one's."""
        return str(run["handle"]) or _pod_name(run["uuid"], run["attempt"])

    def _end(self, run: dict[str, Any]) -> None:
        self._deleting.discard(run["uuid"])
        name = self._pod_of(run)
        self._ended_pods.append(name)
        with self._lock:
            self._made.pop(name, None)

    def _copy_logs(self, run: dict[str, Any], follow: bool) -> None:
        path = Path(run["workdir"] or self.workdir(run["uuid"])) / "stdout.log"
        name = self._pod_of(run)

        def copy() -> None:
            response = None
            try:
                response = self._core().read_namespaced_pod_log(name, self.namespace, follow=follow,
                                                                _preload_content=False)
                with open(path, "wb") as f:
                    for data in response.stream(64 * 1024):
                        f.write(data)
                        f.flush()
            except Exception as e:  # the Pod went away first: what was copied stays
                log.info("log copy for run %s stopped: %s", run["uuid"], _brief(e))
            finally:
                if response is not None:
                    response.release_conn()

        thread = threading.Thread(target=copy, name=f"log-{run['uuid'][:8]}", daemon=True)
        self._logs[run["uuid"]] = thread
        thread.start()
        if not follow:
            thread.join(timeout=30)

    def stop(self, run: dict[str, Any], now: float) -> None:
        """Delete the Pod (SIGTERM, then SIGKILL after the grace period); poll() sees it go."""
        if run["uuid"] not in self._deleting and self._delete(self._pod_of(run)):
            self._deleting.add(run["uuid"])  # else asked again at the next pass

    def _delete(self, name: str) -> bool:
        """Delete a Pod; False if the API could not be asked (gone already counts as done)."""
        try:
            self._core().delete_namespaced_pod(name, self.namespace, grace_period_seconds=KILL_GRACE)
        except self._k8s.client.exceptions.ApiException as e:
            if e.status == 404:
                return True
            log.warning("could not delete Pod %s: %s", name, _brief(e))
            return False
        except Exception as e:
            log.warning("could not delete Pod %s: %s", name, _brief(e))
            return False
        return True

    def log_paths(self, run: dict[str, Any]) -> dict[str, str]:
        return {"stdout": str(Path(run["workdir"] or self.workdir(run["uuid"])) / "stdout.log")}


def _pod_name(run_uuid: str, attempt: int) -> str:
    return f"jobnest-{run_uuid}-{attempt}"


def _container_state(pod: Any) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return statuses[0].state if statuses else None


def _brief(error: Exception) -> str:
    """An API error in a line: its status and message, not the whole response."""
    status, reason, body = (getattr(error, a, None) for a in ("status", "reason", "body"))
    if status is None:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{status} {reason}" + (f": {str(body)[:300]}" if body else "")
