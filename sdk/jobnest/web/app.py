"""`jobnest web`: the job monitor, an ASGI app that is a client of the controller.

Each browser session calls the controller with one token: the one `jobnest web` was started
with (on a loopback address), or the one its user logged in with (required on any other
address). So a session sees exactly what that token may see through the API, and nothing here
can change the controller but through its calls. A session is a random id in an HttpOnly,
SameSite=Strict cookie; every action also needs the session's CSRF token in a header.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, \
    StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._client import Client, Stream, parse_duration
from ..errors import InvalidSpec, JobnestError, NotFound, Unauthenticated
from . import graph
from .live import ROOTS, Hub, Tree

COOKIE = "jobnest_session"
PAGE = 100  # jobs per page of a listing
LOG_PAGE = 64 * 1024  # bytes of a log per page
SESSION_AGE = 7 * 86400  # seconds a login lasts
MAX_SESSIONS = 10_000
STATUS = {"InvalidSpec": 400, "Unauthenticated": 401, "PermissionDenied": 403, "NotFound": 404, "Conflict": 409}


@dataclass
class Session:
    token: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.time() + SESSION_AGE)


class Monitor:
    """The sessions, and a `Hub` (a client and its live trees) per token in use."""

    def __init__(self, address: str, token: str, login: bool) -> None:
        self.address, self.token, self.login = address, token, login
        self.sessions: dict[str, Session] = {}
        self.hubs: dict[str, Hub] = {}

    def hub(self, token: str) -> Hub:
        if token not in self.hubs:
            self.hubs[token] = Hub(Client(self.address, token, driver=False))
        return self.hubs[token]

    def session(self, request: Request) -> Session | None:
        s = self.sessions.get(request.cookies.get(COOKIE, ""))
        if s is not None and s.expires < time.time():
            self.end(request.cookies[COOKIE])
            return None
        return s

    def start(self, token: str) -> tuple[str, Session]:
        for old in [sid for sid, s in self.sessions.items() if s.expires < time.time()]:
            self.end(old)
        while len(self.sessions) >= MAX_SESSIONS:  # the oldest go first
            self.end(next(iter(self.sessions)))
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = Session(token)
        return sid, self.sessions[sid]

    def end(self, sid: str) -> None:
        s = self.sessions.pop(sid, None)
        if s is not None and not any(o.token == s.token for o in self.sessions.values()) and s.token in self.hubs:
            self.hubs.pop(s.token).close()

    def close(self) -> None:
        for hub in self.hubs.values():
            hub.close()


def _split(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def _int(request: Request, name: str, default: int, low: int | None = None, high: int | None = None) -> int:
    text = request.query_params.get(name)
    try:
        value = default if text is None else int(text)
    except ValueError:
        raise InvalidSpec(f"must be a whole number, got {text[:40]!r}", field=name) from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidSpec(f"must be from {low} to {high}, got {value}", field=name)
    return value


@contextlib.contextmanager
def _as_field(name: str, only: str | None = None) -> Iterator[None]:
    """Bad input named by the query parameter `name` it came from (if `only`, for that field)."""
    try:
        yield
    except InvalidSpec as e:
        if only is not None and e.field != only:
            raise
        raise InvalidSpec(e.problem, field=name) from None


def _error(e: JobnestError) -> JSONResponse:
    return JSONResponse({"error": e.problem, "field": e.field}, status_code=STATUS.get(type(e).__name__, 502))


def _page(name: str, monitor: Monitor, s: Session | None, **data: Any) -> HTMLResponse:
    """An HTML shell; static/app.js draws the page from the API."""
    body = json.dumps({"page": name, "csrf": s.csrf if s else "", "login": monitor.login, **data})
    body = body.replace("<", "\\u003c")  # no </script> can end it early
    return HTMLResponse(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>jobnest</title>
<link rel="stylesheet" href="/static/style.css"><link rel="icon" href="data:,">
<script type="application/json" id="boot">{body}</script>
<script type="module" src="/static/app.js"></script></head><body><header><a href="/" class="brand">jobnest</a>
<nav id="nav"></nav></header><main id="main"></main></body></html>""",
                        headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                 "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


def create_app(address: str, token: str = "", *, login: bool = False, allowed_hosts: tuple[str, ...] = (),
               revive: Callable[[], None] | None = None, tes_file_roots: tuple[str, ...] = ()) -> Starlette:
    """The monitor for the controller at `address`. Without `login`, every session uses `token`;
    `allowed_hosts` then limits the Host a browser may name (no other site can rebind to it).
    `tes_file_roots`: the host folders its TES API may read and write for file:// URLs."""
    monitor = Monitor(address, token, login)

    def session_or_login(request: Request) -> Session | Response:
        s = monitor.session(request)
        if s is not None:
            return s
        if login:
            if request.url.path.startswith("/api/") or request.url.path == "/events":
                return JSONResponse({"error": "log in first", "field": "token"}, status_code=401)
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return Session(token)  # made for real in `page`, which sets its cookie

    def api(handler: Callable[..., Any], *, action: bool = False) -> Callable[[Request], Any]:
        """A JSON endpoint called with its session's hub; bad input and controller errors become
        {"error", "field"} with the matching status; an action needs the CSRF header."""
        async def endpoint(request: Request) -> Response:
            s = session_or_login(request)
            if isinstance(s, Response):
                return s
            if action and not (s.csrf and hmac.compare_digest(request.headers.get("x-csrf-token", ""), s.csrf)):
                return JSONResponse({"error": "missing or wrong CSRF token: reload the page", "field": "csrf"},
                                    status_code=403)
            try:
                result = await run_in_threadpool(handler, request, monitor.hub(s.token))
            except JobnestError as e:
                return _error(e)
            return result if isinstance(result, Response) else JSONResponse(result)
        return endpoint

    def page(name: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            s = session_or_login(request)
            if isinstance(s, Response):
                return s
            if revive is not None:
                try:
                    await run_in_threadpool(revive)
                except JobnestError as e:
                    return PlainTextResponse(str(e), status_code=503)
            if monitor.session(request) is not None:
                return _page(name, monitor, s, **request.path_params)
            sid, s = monitor.start(token)  # loopback, first visit: a session of the given token
            return _cookie(_page(name, monitor, s, **request.path_params), sid, request)
        return endpoint

    async def login_page(request: Request) -> Response:
        if request.method == "GET":
            return _page("login", monitor, None, next=request.query_params.get("next", "/"))
        form = {k: v[0] for k, v in parse_qs((await request.body())[:10_000].decode(errors="replace")).items()}
        given = form.get("token", "").strip()
        nxt = form.get("next") or "/"
        nxt = nxt if nxt.startswith("/") and not nxt.startswith(("//", "/\\")) else "/"  # this site only
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            return _page("login", monitor, None, next=nxt, error="this form must be sent from this site")
        try:
            if not given:
                raise Unauthenticated("give a token", field="token")
            with Client(address, given, driver=False) as probe:
                await run_in_threadpool(lambda: list(probe.list(roots=True, limit=1)))
        except JobnestError as e:
            return _page("login", monitor, None, next=nxt, error=e.problem)
        return _cookie(RedirectResponse(nxt, status_code=303), monitor.start(given)[0], request)

    async def logout(request: Request) -> Response:
        s = monitor.session(request)
        if s is not None and hmac.compare_digest(request.headers.get("x-csrf-token", ""), s.csrf):
            monitor.end(request.cookies[COOKIE])
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE)
        return response

    # -- the API --------------------------------------------------------------------------------

    def top_jobs(request: Request, hub: Hub) -> dict[str, Any]:
        """The jobs at the top of the view, newest first: the roots, or with a state or name
        filter every job that matches; `owner` and `since` narrow either."""
        q = request.query_params
        states = _split(q.get("state"))
        with _as_field("since"):
            since = time.time() - parse_duration(q["since"]) if q.get("since") else 0.0
        owner, name = q.get("owner", ""), q.get("name", "")
        offset, limit = _int(request, "offset", 0, 0, 10**6), _int(request, "limit", 50, 1, 500)
        filtered = bool(owner or since)
        listing = hub.client.list(roots=not (states or name), states=states, name=name, newest_first=True,
                                  limit=0 if filtered else offset + limit + 1)
        found = []
        with _as_field("state", only="states"):  # the controller checks the states
            for job in listing:
                if job.created_at < since:
                    break
                if not owner or job.owner == owner:
                    found.append(job.uuid)
                    if len(found) > offset + limit:
                        break
        if not (states or name or offset):
            hub.show_roots()
            if not found:  # a job token sees no root: its own job heads what it may see
                found = [job.uuid for job in hub.client.list(limit=1)]
        shown = found[offset:offset + limit]
        trees = hub.trees_of(shown)
        with hub.lock:
            return {"jobs": [trees[u].row(u) for u in shown if u in trees], "more": len(found) > offset + limit,
                    "seq": hub.seq}

    def located(hub: Hub, uuid: str, top: str = "") -> Tree:
        """A tree holding `uuid`: the one under `top` if given, else any kept, else its own."""
        if top:
            tree = hub.tree(top)
            if uuid not in tree.jobs:
                raise NotFound(f"job {uuid} is not under {top}", field="uuid")
            return tree
        return hub.find(uuid) or hub.tree(hub.client.get(uuid).uuid)

    def children(request: Request, hub: Hub) -> dict[str, Any]:
        uuid = request.path_params["uuid"]
        tree = located(hub, uuid, request.query_params.get("top", ""))
        offset, limit = _int(request, "offset", 0, 0, 10**7), _int(request, "limit", PAGE, 1, 1000)
        with hub.lock:
            kids = tree.children.get(uuid, [])
            return {"jobs": [tree.row(u) for u in kids[offset:offset + limit]], "total": len(kids), "seq": hub.seq}

    def job(request: Request, hub: Hub) -> dict[str, Any]:
        info = hub.client.get(request.path_params["uuid"])
        tree = hub.tree(info.uuid)
        with hub.lock:
            row = tree.row(info.uuid)
        row |= {"reason": info.reason, "argv": list(info.argv), "attempts": list(info.attempts),
                                     "spec": info.spec, "output": info.output, "output_dir": info.output_dir,
                                     "cpu_enforced": info.cpu_enforced}
        try:
            why: dict[str, Any] | None = hub.client.why(info.uuid)
        except JobnestError as e:
            why = {"error": e.problem}
        return {"job": row, "why": why, "seq": hub.seq}

    def logs(request: Request, hub: Hub) -> dict[str, Any]:
        stream = request.query_params.get("stream", "stdout")
        offset = _int(request, "offset", -LOG_PAGE)
        limit = _int(request, "limit", LOG_PAGE, 1, LOG_PAGE)
        chunks = list(hub.client.log_chunks(request.path_params["uuid"], stream=stream, offset=offset, limit=limit))
        start = chunks[0].offset if chunks else max(offset, 0)
        data = b"".join(c.data for c in chunks)
        return {"stream": stream, "offset": start, "end": start + len(data), "text": data.decode(errors="replace")}

    def dependencies(request: Request, hub: Hub) -> Response:
        uuid = request.path_params["uuid"]
        tree = located(hub, uuid, request.query_params.get("top", ""))
        with hub.lock:
            kids = [tree.jobs[u] for u in tree.children.get(uuid, [])]
        if len(kids) > graph.MAX_NODES:
            return JSONResponse({"too_many": len(kids), "limit": graph.MAX_NODES})
        specs = graph.specs_of(hub.client, [j.uuid for j in kids])
        return Response(graph.svg(kids, specs), media_type="image/svg+xml")

    def manifest(request: Request, hub: Hub) -> dict[str, Any]:
        m = hub.client.manifest(request.path_params["digest"])
        return {"digest": m.digest, "entries": [{"path": e.path, "digest": e.digest, "size": e.size,
                                                 "executable": e.executable, "link": e.link} for e in m.entries]}

    def download(request: Request, hub: Hub) -> Response:
        digest, path = request.path_params["digest"], request.path_params["path"]
        entry = next((e for e in hub.client.manifest(digest).entries if e.path == path), None)
        if entry is None or entry.link:
            raise NotFound(f"no file {path!r} in data {digest[:16]}", field="path")
        blob = hub.client.read_blob(entry.digest, digest)
        return StreamingResponse(iterate_in_threadpool(blob), media_type="application/octet-stream", headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1], safe='')}",
            "Content-Length": str(entry.size)})

    def cancel(request: Request, hub: Hub) -> dict[str, Any]:
        cancelled = hub.client.cancel(request.path_params["uuid"], "cancelled from the web monitor")
        return {"cancelled": cancelled}

    def retry(request: Request, hub: Hub) -> dict[str, Any]:
        info = hub.client.get(request.path_params["uuid"])
        if info.state not in ("failed", "cancelled"):
            raise InvalidSpec(f"only a failed or cancelled job is retried; this one {info.state}", field="uuid")
        return {"uuid": hub.client.retry(info.uuid).uuid}

    def invalidate(request: Request, hub: Hub) -> dict[str, Any]:
        hub.client.invalidate(request.path_params["run"])
        return {"invalidated": request.path_params["run"]}

    # -- live -----------------------------------------------------------------------------------

    async def events(request: Request) -> Response:
        """Server-sent updates of the jobs in view: `tops` (each with its roll-up) and the
        children of the `open` ones; one message per tick at most. `Last-Event-ID` (or `last`)
        resumes: what changed since, or a `snapshot` event when that is no longer known."""
        s = session_or_login(request)
        if isinstance(s, Response):
            return s
        hub = monitor.hub(s.token)
        q = request.query_params
        tops, opened, roots = _split(q.get("tops")), set(_split(q.get("open"))), q.get("roots") == "1"
        if len(tops) > 1000 or len(opened) > 1000:
            return _error(InvalidSpec("at most 1000 jobs in view", field="tops"))
        try:
            last = int(request.headers.get("last-event-id") or q.get("last") or hub.seq)
        except ValueError:
            return _error(InvalidSpec("must be a tick number", field="last"))
        await run_in_threadpool(hub.trees_of, tops)
        woken = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop = hub.listen(lambda: loop.call_soon_threadsafe(woken.set))

        def update(touched: frozenset[str]) -> dict[str, Any]:
            """The rows in view that `touched` names (in a thread: the lock is held while a tick is applied)."""
            rows: dict[str, Any] = {}
            with hub.lock:
                for top, tree in [(t, hub.trees[t]) for t in tops if t in hub.trees]:
                    for u in touched.intersection(tree.jobs):
                        if u == top or tree.jobs[u].spawned_by_job_uuid in opened:
                            rows[u] = tree.row(u)
            return {"rows": list(rows.values()), "roots": ROOTS in touched and roots}

        async def stream() -> AsyncIterator[dict[str, Any]]:
            nonlocal last
            try:
                while True:
                    woken.clear()
                    seq = hub.seq
                    touched = hub.touched_since(last)
                    if touched is None:
                        await run_in_threadpool(hub.trees_of, tops, 0)  # watched again if they went
                        yield {"event": "snapshot", "id": str(seq), "data": "{}"}
                    elif touched:
                        message = await run_in_threadpool(update, touched)
                        if message["rows"] or message["roots"]:
                            yield {"event": "update", "id": str(seq), "data": json.dumps(message)}
                    last = seq
                    await woken.wait()
            finally:
                stop()
        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store"})

    async def follow_logs(request: Request) -> Response:
        """A log followed live from `offset` (or `Last-Event-ID`) until its job ends."""
        s = session_or_login(request)
        if isinstance(s, Response):
            return s
        hub = monitor.hub(s.token)
        stream = request.query_params.get("stream", "stdout")
        try:
            offset = int(request.headers.get("last-event-id") or request.query_params.get("offset") or 0)
        except ValueError:
            return _error(InvalidSpec("must be a byte offset", field="offset"))
        chunks = hub.client.log_chunks(request.path_params["uuid"], follow=True, stream=stream, offset=offset)

        async def send() -> AsyncIterator[dict[str, Any]]:
            try:
                async for c in _pumped(chunks):
                    yield {"event": "log", "id": str(c.offset + len(c.data)),
                           "data": json.dumps({"offset": c.offset, "text": c.data.decode(errors="replace")})}
                yield {"event": "end", "data": "{}"}
            except JobnestError as e:
                yield {"event": "failure", "data": json.dumps({"error": e.problem})}
            finally:
                chunks.cancel()  # the browser went: the controller's stream ends, and its reader
        return EventSourceResponse(send(), ping=15, headers={"Cache-Control": "no-store"})

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    def hosts_checked(app: Any) -> Any:
        if not allowed_hosts:
            return app

        async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                host = dict(scope["headers"]).get(b"host", b"").decode()
                if host not in allowed_hosts:
                    await PlainTextResponse(f"this monitor answers at {allowed_hosts[0]}, not {host[:100]!r}",
                                            status_code=421)(scope, receive, send)
                    return
            await app(scope, receive, send)
        return guarded

    from .tes import routes as tes_routes  # the GA4GH TES API; it builds on this module

    tes, close_tes = tes_routes(monitor, tes_file_roots)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        monitor.close()
        close_tes()

    static = StaticFiles(directory=str(resources.files("jobnest.web") / "static"))
    app = Starlette(routes=[
        Route("/", page("tree")),
        Route("/job/{uuid}", page("job")),
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/events", events),
        Route("/api/jobs", api(top_jobs)),
        Route("/api/jobs/{uuid}", api(job)),
        Route("/api/jobs/{uuid}/children", api(children)),
        Route("/api/jobs/{uuid}/graph", api(dependencies)),
        Route("/api/jobs/{uuid}/logs", api(logs)),
        Route("/api/jobs/{uuid}/logs/follow", follow_logs),
        Route("/api/jobs/{uuid}/cancel", api(cancel, action=True), methods=["POST"]),
        Route("/api/jobs/{uuid}/retry", api(retry, action=True), methods=["POST"]),
        Route("/api/runs/{run}/invalidate", api(invalidate, action=True), methods=["POST"]),
        Route("/api/data/{digest}", api(manifest)),
        Route("/data/{digest}/{path:path}", api(download)),
        Mount("/static", static, name="static"),
        *tes,
    ], lifespan=lifespan)
    app.state.monitor = monitor
    return hosts_checked(app)


def _cookie(response: Response, sid: str, request: Request) -> Response:
    https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"  # behind a proxy
    response.set_cookie(COOKIE, sid, max_age=SESSION_AGE, httponly=True, samesite="strict", secure=https)
    return response


async def _pumped(stream: Stream) -> AsyncIterator[Any]:
    """The messages of a blocking stream, read by a thread of its own: a reader cancelled
    while it waits (a browser that went) leaves no thread of the pool blocked; cancel the
    stream and the thread ends."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    def pump() -> None:
        try:
            for message in stream:
                loop.call_soon_threadsafe(queue.put_nowait, message)
            result: Any = done
        except JobnestError as e:
            result = e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(queue.put_nowait, result)

    threading.Thread(target=pump, name="web-stream", daemon=True).start()
    while (message := await queue.get()) is not done:
        if isinstance(message, JobnestError):
            raise message
        yield message
