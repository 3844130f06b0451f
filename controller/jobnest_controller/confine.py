"""Which host folders a job may reach: a policy of the controller's settings, not the caller's word.

A container job that asks for `mount_cwd` gets its cwd mounted only if, once its links are
resolved, it lies under one of the allowed roots, and neither holds nor lies inside anything of
the controller's own (its home, its sockets, its store, a Docker Engine's socket). The check is
made at submit, and again as the container is made, in case a folder was swapped for a link since.
"""

import os
from pathlib import Path

from jobnest.errors import PermissionDenied

from .settings import Settings

ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def forbidden(settings: Settings) -> list[str]:
    """What no job may mount, nor any folder above it."""
    found = [settings.home, settings.server.socket, settings.server.jobs_socket, *ENGINE_SOCKETS]
    found += [e.removeprefix("unix://") for e in settings.docker if e.startswith("unix://")]
    if settings.store.url.startswith("sqlite:///"):
        found.append(settings.store.url.removeprefix("sqlite:///"))
    return sorted({os.path.realpath(p) for p in found})


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def mount_root(cwd: str, roots: list[str], forbid: list[str]) -> str:
    """The allowed root that holds `cwd` (resolved); refused naming `mount_cwd` otherwise."""
    real = os.path.realpath(cwd)
    for bad in forbid:
        if _within(real, bad) or _within(bad, real):
            raise PermissionDenied(f"{cwd} is, holds or lies inside {bad}, which is the controller's own",
                                   field="mount_cwd")
    for root in roots:
        if _within(real, os.path.realpath(root)):
            if not Path(real).is_dir():
                raise PermissionDenied(f"{cwd} is not a folder", field="mount_cwd")
            return os.path.realpath(root)
    allowed = ", ".join(roots) or "none here"
    raise PermissionDenied(f"{cwd} is not under a folder jobs may mount (the controller's mount_roots: {allowed})",
                           field="mount_cwd")
