"""An EMULATED Kubernetes API for tests: Pods kept in memory and served over real HTTP on 127.0.0.1.

Tests of the Kubernetes executor use it through the ``kube`` fixture (``from tests.kube_emulator
import kube``) and talk to it with the official ``kubernetes`` client, or hand a controller process
the kubeconfig file it writes. It is kmock's ``KubernetesEmulator`` (the kopf author's in-memory API
server) plus a small subclass that adds what a Pod client relies on and kmock lacks:

* resourceVersions: one counter for all changes; objects, lists and watch events carry it;
* watches that resume from a resourceVersion, end after ``timeoutSeconds``, send BOOKMARKs when
  allowed, and answer a version older than the last ``expire_watches()`` with 410 Gone;
* label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) on lists and watches;
* the ``pods/log`` endpoint (plain text, ``follow`` and ``tailLines``) with text a test sets;
* Kubernetes-shaped 404/409/422 errors, new Pods in phase ``Pending``, ``generateName``;
* core-group discovery at ``/api/v1`` and ``/api/v1/`` (kmock says ``groupVersion: "/v1"``, kind
  ``Pods``, and lists Pods at the path with the slash, which the client's ``get_api_resources`` uses).

It is NOT a cluster: nothing schedules a Pod, no kubelet runs containers or writes logs or status
(a test does that with ``set_pod_status`` and ``set_pod_log``), deletion is immediate, patches are
JSON merge patches (lists are replaced, not strategically merged), field selectors are ignored and
nothing is validated beyond a Pod's name. Results against it are never "works on Kubernetes".
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import attrs
import aiohttp.web
import kmock
import kubernetes
import pytest

T = TypeVar("T")
Response = kmock.Response  # type: ignore[attr-defined]  # kmock's own reply type, missing from its __all__

PODS = kmock.resource("", "v1", "pods")
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})  # what the API server's ParseBool accepts


class KubeRequest(NamedTuple):
    """One HTTP request the emulator received, as a client made it."""

    method: str  # "GET", "POST", ...
    path: str  # "/api/v1/namespaces/jobs/pods/NAME"
    query: dict[str, str]  # {"watch": "true", "resourceVersion": "7", ...}


def rbac_pair(request: KubeRequest) -> tuple[str, str] | None:
    """The RBAC (resource, verb) a request needs, e.g. ("pods/log", "get"); None for non-resource URLs."""
    parts = request.path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        rest = parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        rest = parts[3:]
    else:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:  # a namespaced resource, not a Namespace itself
        rest = rest[2:]
    resource = "/".join([rest[0], *rest[2:]])
    named = len(rest) >= 2
    if request.method == "GET":
        verb = "watch" if request.query.get("watch") in _TRUE else "get" if named else "list"
    else:
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if named else "deletecollection"}
        verb = verbs.get(request.method, request.method.lower())
    return resource, verb


class _Selector:
    """A label selector, parsed once; matches a Pod's labels."""

    _KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
    _VALUE = r"[-A-Za-z0-9_.]*"
    _SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*")
    _EQUALS = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
    _EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")

    def __init__(self, text: str) -> None:
        # Each term is (key, operator, values); "!=" and "notin" also match Pods without the label.
        self.terms: list[tuple[str, str, frozenset[str]]] = []
        for term in re.split(r",(?![^()]*\))", text) if text.strip() else []:
            if match := self._SET.fullmatch(term):
                self.terms.append((match[1], match[2], frozenset(v.strip() for v in match[3].split(","))))
            elif match := self._EQUALS.fullmatch(term):
                self.terms.append((match[1], "notin" if match[2] == "!=" else "in", frozenset({match[3]})))
            elif match := self._EXISTS.fullmatch(term):
                self.terms.append((match[2], "absent" if match[1] else "present", frozenset()))
            else:
                raise kmock.KubernetesError(status=400, reason="BadRequest",
                                            message=f"unable to parse requirement: {term!r}")

    def matches(self, pod: dict[str, Any]) -> bool:
        labels: dict[str, str] = pod.get("metadata", {}).get("labels") or {}
        checks = {"in": lambda key, values: labels.get(key) in values,
                  "notin": lambda key, values: labels.get(key) not in values,
                  "present": lambda key, values: key in labels,
                  "absent": lambda key, values: key not in labels}
        return all(checks[op](key, values) for key, op, values in self.terms)


@attrs.frozen
class _Event:
    """One entry of the change log: a Pod event, or a signal to the open watches."""

    version: int
    type: str  # ADDED, MODIFIED, DELETED; or the signals EXPIRED, BOOKMARK, CLOSED
    pod: dict[str, Any] | None = None


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch: dicts merge, None deletes, anything else (lists too) replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _status(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def _not_found(name: str | None) -> kmock.KubernetesError:
    return _status(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")


def _gone(since: int, oldest: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": f"too old resource version: {since} ({oldest})",
                                        "reason": "Expired", "code": 410}}


def _bookmark(version: int) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": str(version)}}}


def _tail(text: str, lines: str | None) -> str:
    if lines is None:
        return text
    kept = text.splitlines(keepends=True)[-int(lines):] if int(lines) > 0 else []
    return "".join(kept)


@attrs.define(kw_only=True)
class _PodsEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with Pods served by the methods below; other resources stay kmock's own."""

    calls: list[KubeRequest] = attrs.field(factory=list, init=False)
    _pods: dict[tuple[str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _logs: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)
    _events: list[_Event] = attrs.field(factory=list, init=False)
    _version: int = attrs.field(default=0, init=False)  # the last resourceVersion handed out
    _oldest: int = attrs.field(default=0, init=False)  # watching from before it gets 410 Gone
    _closed: bool = attrs.field(default=False, init=False)
    _changed: asyncio.Condition = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._changed = asyncio.Condition(self._lock)  # every change notifies watches and log followers
        self.resources[PODS] = kmock.ResourceInfo(
            kind="Pod", singular="pod", namespaced=True, subresources={"status", "log"},
            verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"})

    async def _handle(self, request: kmock.Request) -> Any:
        self.calls.append(KubeRequest(str(request.method.value), request.url.path, dict(request.params)))
        if request.resource != PODS:
            return await super()._handle(request)
        if request.method == kmock.method.GET and request.params.get("watch") in _TRUE:
            object.__setattr__(request, "action", kmock.action.WATCH)  # kmock knows only "watch=true"
        # Pods change in the _serve_* methods below, with resourceVersions and events; so skip
        # KubernetesEmulator._handle's own bookkeeping and go straight to the reactions/fallbacks.
        response = await super(kmock.KubernetesEmulator, self)._handle(request)
        # kmock keeps the headers of one answer for the next ones (a nested Response(headers=...)
        # is merged into the reaction itself), so each answer not yet sent says what it is here.
        if isinstance(response, aiohttp.web.Response) and not response.prepared:
            response.content_type = "text/plain" if request.url.path.endswith("/log") else "application/json"
        return response

    # kmock labels the core group "/v1"; clients (kubectl, dynamic clients) want "v1".
    async def _serve_version(self, request: kmock.Request) -> Any:
        result = cast(dict[str, Any], await super()._serve_version(request))
        if request.resource is not None and request.resource.group == "":
            result["groupVersion"] = request.resource.version
        return result

    def _change(self, type: str, pod: dict[str, Any] | None = None) -> int:
        """Log a change under a new resourceVersion and wake the watchers; call with the lock held."""
        self._version += 1
        if pod is not None:
            pod["metadata"]["resourceVersion"] = str(self._version)
            pod = copy.deepcopy(pod)
        self._events.append(_Event(self._version, type, pod))
        self._changed.notify_all()
        return self._version

    def _pod(self, namespace: str | None, name: str | None) -> dict[str, Any]:
        pod = self._pods.get((namespace or "", name or ""))
        if pod is None:
            raise _not_found(name)
        return pod

    async def _serve_create(self, request: kmock.Request) -> Any:
        if request.resource != PODS:
            return await super()._serve_create(request)
        if not isinstance(request.data, dict):
            raise _status(400, "BadRequest", "the body must be a Pod object")
        pod = copy.deepcopy(request.data)
        meta = pod.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace") or "default"
        if meta.get("namespace", namespace) != namespace:
            raise _status(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                             "sent on the request")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise _status(422, "Invalid", "Pod is invalid: metadata.name: Required value", kind="Pod")
        async with self._changed:
            if (namespace, meta["name"]) in self._pods:
                raise _status(409, "AlreadyExists", f'pods "{meta["name"]}" already exists',
                              name=meta["name"], kind="pods")
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now)
            pod.update(apiVersion="v1", kind="Pod", status={"phase": "Pending"})
            self._pods[namespace, meta["name"]] = pod
            self._change("ADDED", pod)
            return Response(status=201, payload=copy.deepcopy(pod))

    async def _serve_update(self, request: kmock.Request) -> Any:
        if request.resource != PODS:
            return await super()._serve_update(request)
        if not isinstance(request.data, dict):
            raise _status(415, "UnsupportedMediaType", "only merge patches (a JSON object) are emulated")
        async with self._changed:
            pod = self._pod(request.namespace, request.name)
            if request.subresource == "status":  # the status subresource changes only the status...
                patch = {"status": request.data.get("status") or {}}
            else:  # ... and the Pod itself everything but the status and the server-set fields
                patch = {key: value for key, value in request.data.items() if key != "status"}
                fixed = {"name", "namespace", "uid", "creationTimestamp", "resourceVersion"}
                patch["metadata"] = {k: v for k, v in (patch.get("metadata") or {}).items() if k not in fixed}
            _merge(pod, patch)
            self._change("MODIFIED", pod)
            return copy.deepcopy(pod)

    async def _serve_delete(self, request: kmock.Request) -> Any:
        if request.resource != PODS:
            return await super()._serve_delete(request)
        async with self._changed:
            pod = self._pod(request.namespace, request.name)
            # Immediate, as the API server does for a Pod no node runs: there is no kubelet here.
            del self._pods[request.namespace or "", request.name or ""]
            self._logs.pop((request.namespace or "", request.name or ""), None)
            self._change("DELETED", pod)
            return copy.deepcopy(pod)

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        if request.resource != PODS:
            return await super()._serve_fetch(request)
        if request.subresource == "log":
            return await self._serve_log(request)
        async with self._changed:
            return copy.deepcopy(self._pod(request.namespace, request.name))

    async def _serve_list(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.resource.plural is None:
            return await self._serve_version(request)  # "/api/v1/": kmock's discovery wants no slash
        if request.resource != PODS:
            return await super()._serve_list(request)
        selector = _Selector(request.params.get("labelSelector", ""))
        async with self._changed:
            items = [copy.deepcopy(pod) for (namespace, _), pod in sorted(self._pods.items())
                     if request.namespace in (None, namespace) and selector.matches(pod)]
            return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(self._version)},
                    "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        if request.resource != PODS:
            async for item in super()._serve_watch(request):
                yield item
            return

        # Bad parameters fail before the stream starts, so they become plain HTTP errors.
        params = request.params
        selector = _Selector(params.get("labelSelector", ""))
        bookmarks = params.get("allowWatchBookmarks") in _TRUE
        since = params.get("resourceVersion", "")
        if since not in ("", "0") and not since.isdigit():
            raise _status(400, "BadRequest", f"invalid resourceVersion {since!r}")
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout

        def wanted(event: _Event) -> bool:
            pod = event.pod or {}
            namespace = pod.get("metadata", {}).get("namespace")
            return event.pod is not None and request.namespace in (None, namespace) and selector.matches(pod)

        yield b""  # send the headers now: the client's call returns only when they arrive

        # As the API server: no version means the current Pods as ADDED; a version, the changes since.
        async with self._changed:
            seen = len(self._events)
            if since in ("", "0"):
                backlog = [_Event(self._version, "ADDED", copy.deepcopy(pod)) for _, pod in sorted(self._pods.items())]
            elif int(since) < self._oldest:
                backlog = [_Event(self._oldest, "EXPIRED")]
            else:
                backlog = [event for event in self._events if event.version > int(since)]

        position = int(since) if since.isdigit() else self._version
        while True:
            for event in backlog:
                if event.type == "CLOSED":
                    return
                if event.type == "EXPIRED":
                    yield _gone(position, self._oldest)
                    return
                if event.type == "BOOKMARK":
                    if bookmarks:
                        yield _bookmark(event.version)
                elif wanted(event):
                    yield {"type": event.type, "object": event.pod}
                position = event.version
            async with self._changed:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._changed.wait_for(lambda: len(self._events) > seen)
                except TimeoutError:
                    timed_out = True
                else:
                    timed_out, backlog, seen = False, self._events[seen:], len(self._events)
            if timed_out:  # the server-side timeoutSeconds: the API server ends the watch, as here
                if bookmarks:
                    yield _bookmark(self._version)
                return

    async def _serve_log(self, request: kmock.Request) -> Any:
        key = (request.namespace or "", request.name or "")
        async with self._changed:
            self._pod(*key)
            text = self._logs.get(key, "")
        if request.params.get("follow") not in _TRUE:  # text/plain: set in _handle
            return Response(payload=_tail(text, request.params.get("tailLines")).encode())
        return Response(payload=self._follow_log(key, text, request.params.get("tailLines")))

    async def _follow_log(self, key: tuple[str, str], text: str, tail: str | None) -> AsyncIterator[bytes]:
        """Stream the log as it grows until the Pod ends (phase Succeeded/Failed) or is deleted."""
        yield _tail(text, tail).encode()  # even if empty: it sends the headers

        def ended() -> bool:
            pod = self._pods.get(key)
            return self._closed or pod is None or pod.get("status", {}).get("phase") in TERMINAL_PHASES

        sent = text
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._logs.get(key, "") != sent or ended())
                current, done = self._logs.get(key, ""), ended()
            if current != sent:
                yield (current[len(sent):] if current.startswith(sent) else current).encode()
                sent = current
            if done:
                return

    # The test-side controls, called on the server's loop by KubeEmulator.

    async def set_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> int:
        async with self._changed:
            pod = self._pod(namespace, name)
            pod["status"] = copy.deepcopy(status)
            return self._change("MODIFIED", pod)

    async def set_pod_log(self, namespace: str, name: str, text: str, append: bool) -> None:
        async with self._changed:
            self._pod(namespace, name)
            self._logs[namespace, name] = (self._logs.get((namespace, name), "") if append else "") + text
            self._changed.notify_all()

    async def signal(self, type: str) -> int:
        """Send EXPIRED, BOOKMARK or CLOSED to every open watch (EXPIRED also to later stale ones)."""
        async with self._changed:
            if type == "EXPIRED":  # a version of its own, so that every earlier one is too old
                self._oldest = self._change(type)
            else:
                self._events.append(_Event(self._version, type))
                self._closed = self._closed or type == "CLOSED"
                self._changed.notify_all()
            return self._version

    async def snapshot(self, namespace: str | None) -> list[dict[str, Any]]:
        async with self._changed:
            return [copy.deepcopy(pod) for (ns, _), pod in sorted(self._pods.items()) if namespace in (None, ns)]


class KubeEmulator:
    """The emulated API on a free port of 127.0.0.1, served by a thread with its own asyncio loop."""

    def __init__(self) -> None:
        self.port = 0
        self._server: _PodsEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server(self) -> _PodsEmulator:
        """The kmock handler itself, for kmock's DSL (e.g. ``kube.server['post v1/pods'] << 500``)."""
        assert self._server is not None, "the emulator is not running"
        return self._server

    def start(self) -> KubeEmulator:
        self._thread.start()
        if not self._ready.wait(10) or self._failure is not None:
            raise RuntimeError("the Kubernetes emulator did not start") from self._failure
        return self

    def stop(self) -> None:
        """End the open watches and log streams (else aiohttp waits for them), then the server."""
        if self._loop is not None and self._thread.is_alive():
            self._call(self.server.signal("CLOSED"))
            assert self._stopping is not None
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); nothing else would see it
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        async with _PodsEmulator() as server, kmock.Server(server, host="127.0.0.1") as http:
            self._server, self.port = server, http.port
            self._ready.set()
            await self._stopping.wait()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "the emulator is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # Clients.

    def api_client(self) -> kubernetes.client.ApiClient:
        """An ApiClient for this emulator: plain HTTP, no credentials."""
        config = kubernetes.client.Configuration(host=self.url)
        return kubernetes.client.ApiClient(config)

    def kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig file whose current context is this emulator (e.g. for --k8s-kubeconfig)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kube-emulator", "preferences": {},
            "clusters": [{"name": "kube-emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "kube-emulator", "user": {}}],
            "contexts": [{"name": "kube-emulator",
                          "context": {"cluster": "kube-emulator", "user": "kube-emulator", "namespace": namespace}}],
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML, which kubeconfig loaders read
        return path

    # What the clients did.

    @property
    def requests(self) -> list[KubeRequest]:
        """Every request received so far, in order (a copy)."""
        return list(self.server.calls)

    def rbac_pairs(self) -> set[tuple[str, str]]:
        """The (resource, verb) pairs the requests so far needed, e.g. {("pods", "create"), ("pods/log", "get")}."""
        return {pair for request in self.requests if (pair := rbac_pair(request)) is not None}

    # The kubelet's part, played by the test.

    def set_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> str:
        """Replace a Pod's ``.status`` as a kubelet would; open watches get MODIFIED. Returns the new
        resourceVersion; raises ``kmock.KubernetesError`` (status 404) if there is no such Pod.

        ``status`` is the API's JSON, e.g. ``{"phase": "Failed", "containerStatuses": [{"name": "main",
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}``.
        """
        return str(self._call(self.server.set_pod_status(namespace, name, status)))

    def set_pod_log(self, namespace: str, name: str, text: str) -> None:
        """Replace what the Pod's log endpoint returns (followers get the new text); 404 if no Pod."""
        self._call(self.server.set_pod_log(namespace, name, text, append=False))

    def append_pod_log(self, namespace: str, name: str, text: str) -> None:
        """Add to the Pod's log; ``follow=True`` readers receive just the new text."""
        self._call(self.server.set_pod_log(namespace, name, text, append=True))

    def expire_watches(self) -> str:
        """Make every resourceVersion handed out so far too old: open watches get an ERROR event with
        code 410 (Expired) and end; later watches from such a version get the same at once. Listing
        again returns a version that can be watched. Returns that version."""
        return str(self._call(self.server.signal("EXPIRED")))

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to open watches that allow bookmarks."""
        self._call(self.server.signal("BOOKMARK"))

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The stored Pods (copies), for assertions on what a client created."""
        return self._call(self.server.snapshot(namespace))

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    """A fresh emulated Kubernetes API per test (an EMULATOR, not a cluster; see the module docstring)."""
    with KubeEmulator() as emulator:
        yield emulator
