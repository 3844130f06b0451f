"""The web monitor (`jobnest web`): see `app`."""

import ipaddress
import socket
from collections.abc import Callable

from .app import create_app


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(address: str, token: str, host: str = "127.0.0.1", port: int = 8080, login: bool | None = None,
          ready: Callable[[str], None] | None = None, revive: Callable[[], None] | None = None,
          tes_file_roots: tuple[str, ...] = ()) -> None:
    """Serve the monitor for the controller at `address` until interrupted. On a loopback
    address every visitor acts with `token` (unless `login`); elsewhere each logs in with theirs.
    `revive`, if given, is called before each page is served (to start a local controller again).
    `tes_file_roots`: the host folders the TES API may read and write for file:// URLs."""
    import uvicorn

    login = not loopback(host) if login is None else login
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait from now on, before the server takes them
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    names = (shown, "localhost", "127.0.0.1", "[::1]")
    hosts = () if login else tuple(f"{h}:{port}" for h in names) + (names if port == 80 else ())  # 80: no port
    app = create_app(address, token, login=login, allowed_hosts=hosts, revive=revive, tes_file_roots=tes_file_roots)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    if ready:
        ready(f"http://{shown}:{port}/")
    server.run(sockets=[sock])
