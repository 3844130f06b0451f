"""The Docker executor: each run is a container on one of several Docker Engines, its nodes.

It talks to each engine over the Engine API with the `docker` package, imported here and only
here. A container gets the run's cpu share as a CPU limit, its memory limit, an init process,
labels naming the run and the controller, the run's output dir at /jobnest/out, its inputs at
/jobnest/inputs/NAME (read-only), a runner's program folder (the run's own copy, writable) at
/jobnest/program, and the jobs' socket at /run/jobnest/jobs.sock. Its stdout and stderr are
copied into the run's work dir as they come, so `jobnest logs -f` reads them as it does a local
run's. A restarted controller finds its containers again by id (or by label, for one it was
starting) and learns how they ended. An image no node has comes from its registry, named by
the digest the registry gives for it at submit (`resolve_image`), and pulled by each node the
first time a run needs it there.
"""

import logging
import os
import signal
import threading
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from jobnest.errors import InvalidSpec, JobnestError, Unavailable

from .. import confine
from ..registry import name_of
from ..scheduler import THIS_MACHINE, Node
from .base import Exited, Launch, Started, expand

log = logging.getLogger(__name__)
RUN_LABEL = "jobnest.run"
ATTEMPT_LABEL = "jobnest.attempt"
CONTROLLER_LABEL = "jobnest.controller"
JOBS_SOCKET = "/run/jobnest/jobs.sock"
OUTPUT = "/jobnest/out"
PROGRAM = "/jobnest/program"
INPUTS = "/jobnest/inputs"
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
# Seconds a run found with its container made but not started, or with none, is left to what a
# controller that died as it asked may still have under way in the engine (a start, a create):
# only then is it started here, or queued again.
START_SETTLE = 2.0
RETRY_DOWN = 2.0  # seconds before an unreachable engine is tried again
LIVE = ("created", "running", "restarting", "paused")


class DockerExecutor:
    name = "docker"
    slow_starts = True

    def __init__(self, root: str, endpoints: list[str], controller_id: str, forbidden: Sequence[str] = ()) -> None:
        try:
            import docker
        except ImportError:
            raise JobnestError("the docker executor needs the `docker` package: pip install 'jobnest[docker]'") from None
        self._docker = docker
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.endpoints = {(f"docker-{i}" if len(endpoints) > 1 else "docker"): e for i, e in enumerate(endpoints)}
        self.controller_id = controller_id
        self.forbidden = list(forbidden)  # what no job may mount (see `confine`)
        self._clients: dict[str, Any] = {}
        self._capacity: dict[str, Node] = {}
        self._down: dict[str, tuple[str, float]] = {}  # node -> (why, when last tried)
        self._watchers: dict[str, list[threading.Thread]] = {}  # run -> log copiers, then its waiter
        self._ended: dict[str, dict[str, Any] | None] = {}  # run -> its container's last state (None: gone)
        self.notify: Callable[[], None] = lambda: None  # the controller's "look now"
        self._stopping: dict[str, float] = {}
        self._seen_images: dict[str, str] = {}  # name -> content id, as last resolved
        self._ended_containers: list[tuple[str, str]] = []  # (node, container id) to remove
        self._signalled: dict[str, int] = {}  # run -> the last signal sent to it
        self._settled: dict[str, float] = {}  # run -> when it was first found with no container started
        self._containers: dict[str, str] = {}  # run -> the container watched (its handle may not be stored)

    # -- nodes ---------------------------------------------------------------------------------

    def _client(self, node: str) -> Any:
        if node not in self._clients:
            self._clients[node] = self._docker.DockerClient(base_url=self.endpoints[node], timeout=30)
        return self._clients[node]

    def _failed(self, node: str, error: Exception) -> None:
        if node not in self._down:
            log.warning("docker node %s (%s) is unreachable: %s", node, self.endpoints[node], error)
        self._down[node] = (f"docker node {node} ({self.endpoints[node]}) is unreachable: {error}", time.monotonic())

    def nodes(self) -> list[Node]:
        """The engines that answer, with their capacity; one that did not is tried every few seconds."""
        up = []
        for name in self.endpoints:
            down = self._down.get(name)
            if down is not None and time.monotonic() - down[1] < RETRY_DOWN:
                continue
            if name not in self._capacity or down is not None:
                try:
                    info = self._client(name).info()
                except Exception as e:  # any failure to reach it: connection refused, timeout, TLS
                    self._failed(name, e)
                    continue
                self._capacity[name] = Node(name, info["NCPU"] * 1000, info["MemTotal"], cpu_enforced=True)
                self._down.pop(name, None)
            c = self._capacity[name]
            # An engine on this machine's socket shares its cores with the local executor.
            machine = THIS_MACHINE if self.endpoints[name].startswith("unix://") else self.endpoints[name]
            up.append(Node(c.name, c.cpu_millis, c.memory, cpu_enforced=True, machine=machine))
        return up

    def tidy(self) -> None:
        """Remove the containers whose end was just stored: never before, so a crash in between
        never loses an exit code."""
        while self._ended_containers:
            self._remove_later(*self._ended_containers.pop())

    def why_no_nodes(self) -> str:
        return "; ".join(why for why, _ in self._down.values()) or "waiting: no docker node answers"

    def resolve_image(self, image: str) -> str:
        """The content id of `image` on the first node that has it: what the signature names.

        While no node answers, the id last seen for the name stands in, so work can still be
        queued for when the nodes are back."""
        if not image:
            raise InvalidSpec("required by the docker executor")
        found: dict[str, str] = {}  # node -> content id
        missing = []
        for node in self.endpoints:
            if node in self._down and time.monotonic() - self._down[node][1] < RETRY_DOWN:
                continue
            try:
                found[node] = _content_id(self._client(node).images.get(image), image)
            except self._docker.errors.ImageNotFound:
                missing.append(node)
            except self._docker.errors.APIError as e:
                if not e.is_client_error():
                    self._failed(node, e)
                    continue
                # A name the engine refuses (400): the job's mistake, not the node's.
                raise InvalidSpec(f"{image[:200]!r} is a name the docker engine refuses: {e.explanation}") from None
            except Exception as e:  # the engine cannot be reached
                self._failed(node, e)
        if not found and not missing:
            if image in self._seen_images:
                return self._seen_images[image]
            raise Unavailable(f"no docker node answers, so image {image!r} cannot be found", field="image")
        if missing:  # the scheduler may place a run on any node, so every node needs it: from its registry
            where = "is on no docker node" if not found else f"is missing on docker node {', '.join(missing)}"
            try:
                pinned = f"{name_of(image)}@{self._client(missing[0]).images.get_registry_data(image).id}"
            except self._docker.errors.APIError as e:
                raise InvalidSpec(f"{image!r} {where}, and its registry says: {e.explanation}") from None
            except Exception as e:  # the engine went away meanwhile
                self._failed(missing[0], e)
                raise Unavailable(f"docker node {missing[0]} is unreachable: {e}", field="image") from e
            self._seen_images[image] = pinned  # each node pulls it by digest as a run needs it there
            return pinned
        if len(set(found.values())) > 1:
            raise InvalidSpec(f"{image!r} names different content on different docker nodes")
        self._seen_images[image] = next(iter(found.values()))
        return self._seen_images[image]

    def _pull(self, node: str, image: str) -> None:
        """Pull an image named by digest (as `resolve_image` names one from a registry) that the node
        lacks; a pull refused fails the run with the registry's words."""
        if "@" not in image:
            return
        client = self._client(node)
        try:
            client.images.get(image)
            return
        except self._docker.errors.ImageNotFound:
            pass
        except Exception as e:
            self._failed(node, e)
            raise Unavailable(f"docker node {node} is unreachable: {e}") from e
        try:
            client.images.pull(image)
        except self._docker.errors.APIError as e:
            raise JobnestError(f"could not pull {image}: {e.explanation}") from None
        except Exception as e:
            self._failed(node, e)
            raise Unavailable(f"docker node {node} is unreachable: {e}") from e

    # -- runs ----------------------------------------------------------------------------------

    def workdir(self, run_uuid: str) -> str:
        return str(self.root / run_uuid)

    def start(self, launch: Launch) -> Started:
        workdir = Path(self.workdir(launch.run_uuid))
        (workdir / "out").mkdir(parents=True, exist_ok=True)
        env = {**launch.env, "JOBNEST_OUTPUT": OUTPUT, "JOBNEST_CONTROLLER": launch.controller}
        binds = [(str(workdir / "out"), OUTPUT, "rw")]  # (host path, container path, mode)
        if launch.program:
            binds.append((launch.program, PROGRAM, "rw"))  # the run's own copy: it may write beside it
        seen = {}  # input name -> its path in the container
        for name, path in launch.inputs.items():
            host = Path(path)
            folder = host.parent if host.is_file() else host  # a one-file upload: its folder
            binds.append((str(folder), f"{INPUTS}/{name}", "ro"))
            seen[name] = f"{INPUTS}/{name}" + (f"/{host.name}" if folder != host else "")
        if launch.mount_cwd:  # checked again: a folder may have been swapped for a link since the submit
            confine.mount_root(launch.cwd, [launch.mount_root], self.forbidden)
            binds.append((os.path.realpath(launch.cwd), launch.cwd, "rw"))
        if launch.controller.startswith("unix://"):
            binds.append((launch.controller.removeprefix("unix://"), JOBS_SOCKET, "rw"))
            env["JOBNEST_CONTROLLER"] = f"unix://{JOBS_SOCKET}"
        mounts = [self._docker.types.Mount(target, source, type="bind", read_only=mode == "ro")
                  for source, target, mode in binds]
        self._pull(launch.node, launch.image)
        try:
            container = self._client(launch.node).containers.create(
                launch.image, command=expand(launch.argv, seen, OUTPUT), environment=env,
                working_dir=launch.cwd or (PROGRAM if launch.program else None),
                nano_cpus=launch.cpu_millis * 1_000_000, mem_limit=launch.memory or None,
                memswap_limit=launch.memory or None, init=True, mounts=mounts,
                labels={RUN_LABEL: launch.run_uuid, ATTEMPT_LABEL: str(launch.attempt),
                        CONTROLLER_LABEL: self.controller_id},
                extra_hosts={"host.docker.internal": "host-gateway"}, detach=True,
            )
        except self._docker.errors.APIError:
            raise  # the engine answered no: the run fails with its message
        except Exception as e:  # it did not answer: the run waits for it
            self._failed(launch.node, e)
            raise Unavailable(f"docker node {launch.node} is unreachable: {e}") from e
        try:
            container.start()
        except self._docker.errors.APIError:
            self._remove_later(launch.node, container.id)
            raise
        except Exception as e:  # it stopped answering: the run waits, the container goes later
            self._failed(launch.node, e)
            self._remove_later(launch.node, container.id)
            raise Unavailable(f"docker node {launch.node} is unreachable: {e}") from e
        self._watch(launch.run_uuid, launch.node, container.id, workdir)
        return Started(0, str(workdir), True, container.id)

    def _watch(self, run_uuid: str, node: str, container_id: str, workdir: Path) -> None:
        """Copy the container's stdout and stderr into the run's log files, and wait for its end
        on a thread of its own, so the reconciler hears of it at once and polls nothing."""
        api = self._client(node).api

        def copy(stream: str) -> None:
            with open(workdir / f"{stream}.log", "wb") as f:
                try:
                    for data in api.logs(container_id, stream=True, follow=True, stdout=stream == "stdout",
                                         stderr=stream == "stderr"):
                        f.write(data)
                        f.flush()
                except Exception as e:  # the engine went away; poll() watches again later
                    log.info("log copy for run %s stopped: %s", run_uuid, e)

        def wait() -> None:
            try:
                api.wait(container_id)
                self._ended[run_uuid] = api.inspect_container(container_id)["State"]
            except self._docker.errors.NotFound:
                self._ended[run_uuid] = None
            except Exception as e:  # the engine went away: poll() looks again when it is back
                self._failed(node, e)
                return
            self.notify()

        threads = [threading.Thread(target=copy, args=(s,), name=f"{s}-{run_uuid[:8]}", daemon=True)
                   for s in ("stdout", "stderr")]
        threads.append(threading.Thread(target=wait, name=f"wait-{run_uuid[:8]}", daemon=True))
        self._watchers[run_uuid] = threads
        self._containers[run_uuid] = container_id
        for thread in threads:
            thread.start()

    def _container_id(self, run: dict[str, Any]) -> str:
        if run["handle"]:
            return str(run["handle"])
        found = self._client(run["node"]).api.containers(all=True, filters={"label": [
            f"{RUN_LABEL}={run['uuid']}", f"{ATTEMPT_LABEL}={run['attempt']}"]})  # not an earlier attempt's
        started = [c for c in found if c["State"] != "created"]  # over one made by a create under way as it died
        return str((started or found)[0]["Id"]) if found else ""

    def _settling(self, uuid: str) -> bool:
        """Whether the run was first found unstarted less than `START_SETTLE` seconds ago."""
        first = self._settled.setdefault(uuid, time.monotonic())
        if time.monotonic() - first < START_SETTLE:
            return True
        del self._settled[uuid]
        return False

    def poll(self, run: dict[str, Any]) -> Exited | None:
        uuid, node = run["uuid"], run["node"]
        container_id = str(run["handle"]) or self._containers.get(uuid, "")
        if uuid in self._ended:
            state = self._ended.pop(uuid)
        elif uuid in self._watchers and self._watchers[uuid][-1].is_alive():
            return None
        else:  # not watched: adopted after a restart, or its engine was away
            try:
                container_id = self._container_id(run)
                if not container_id:
                    if self._settling(uuid):
                        return None
                    log.info("run %s: no container of attempt %s: it never started, and is queued again",
                             uuid, run["attempt"])
                    return Exited(None, "the controller stopped before the run started", started=False)
                state = self._client(node).api.inspect_container(container_id)["State"]
            except self._docker.errors.NotFound:
                state = None
            except Exception as e:  # cannot see it now: it keeps its state until the node answers
                self._failed(node, e)
                return None
            workdir = Path(run["workdir"] or self.workdir(uuid))
            if state is not None and state["Status"] == "created":
                # Made by a controller that died before it was started, or while it was being
                # started: starting it makes it run once, where a new one could run twice. But a
                # start the engine is still carrying out makes it run, and starting it once it
                # has run would run it again: it is started only if it stays made for a while.
                if self._settling(uuid):
                    return None
                log.info("run %s: its container %s was made, never started: starting it", uuid, container_id[:12])
                (workdir / "out").mkdir(parents=True, exist_ok=True)
                self._client(node).api.start(container_id)
                self._watch(uuid, node, container_id, workdir)
                return None
            self._settled.pop(uuid, None)
            if state is not None and state["Status"] in LIVE:
                self._watch(uuid, node, container_id, workdir)
                return None
            if state is not None:  # it ended while nobody watched: keep all of its output
                self._copy_logs(node, container_id, workdir)
        for thread in self._watchers.pop(uuid, []):
            thread.join(timeout=5)
        self._containers.pop(uuid, None)
        self._stopping.pop(uuid, None)
        self._signalled.pop(uuid, None)
        if state is None:
            return Exited(None, "lost: its container is gone")
        self._ended_containers.append((node, container_id))
        if state.get("OOMKilled"):
            return Exited(state["ExitCode"], "out of memory")
        return Exited(state["ExitCode"], f"exit code {state['ExitCode']}")

    def _copy_logs(self, node: str, container_id: str, workdir: Path) -> None:
        api = self._client(node).api
        for stream in ("stdout", "stderr"):
            data = api.logs(container_id, stdout=stream == "stdout", stderr=stream == "stderr")
            (workdir / f"{stream}.log").write_bytes(data)

    def _remove_later(self, node: str, container_id: str) -> None:
        def remove() -> None:
            try:
                self._client(node).api.remove_container(container_id, force=True, v=True)
            except Exception as e:
                log.warning("could not remove container %s: %s", container_id[:12], e)

        threading.Thread(target=remove, name=f"rm-{container_id[:8]}", daemon=True).start()

    def stop(self, run: dict[str, Any], now: float) -> None:
        first = self._stopping.setdefault(run["uuid"], now)
        sig = int(signal.SIGKILL if now - first >= KILL_GRACE else signal.SIGTERM)
        if self._signalled.get(run["uuid"]) == sig:
            return  # each signal once; poll() sees the end
        try:
            container_id = self._container_id(run)
            if container_id:
                self._client(run["node"]).api.kill(container_id, signal=sig)
            self._signalled[run["uuid"]] = sig
        except Exception as e:  # not running any more, or the node is away: poll() tells
            log.debug("stopping run %s: %s", run["uuid"], e)

    def close(self) -> None:
        pass  # its threads end with their runs' processes or containers

    def log_paths(self, run: dict[str, Any]) -> dict[str, str]:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        return {"stdout": str(workdir / "stdout.log"), "stderr": str(workdir / "stderr.log")}


def _content_id(found: Any, image: str) -> str:
    """What the signature names for an image a node has: its registry digest (`repo@sha256:...`)
    when it came from the registry `image` names, so a pulled image means the same as one still to
    pull; else its image id."""
    repository = name_of(image)
    return next((d for d in found.attrs.get("RepoDigests") or [] if d.split("@", 1)[0] == repository), str(found.id))
