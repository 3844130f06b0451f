"""Which host folders a job may reach: a policy of the controller's settings, not the caller's word.

Local jobs run in a `Sandbox` that hides the controller's own files from them.

A container job that asks for `mount_cwd` gets its cwd mounted only if, once its links are
resolved, it lies under one of the allowed roots, and neither holds nor lies inside anything of
the controller's own (its home, its sockets, its store, a Docker Engine's socket); a job's
children may also mount what lies in its own run folder. The check is
made at submit, and again as the container is made, in case a folder was swapped for a link since.
"""

import ctypes
import os
import shlex
import subprocess
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


def mount_root(cwd: str, roots: list[str], forbid: list[str], field: str = "mount_cwd") -> str:
    """The allowed root that holds `cwd` (resolved); refused naming `field` otherwise.

    A root inside the controller's own folders is a job's own run folder, which holds nothing
    else of the controller's: anything under it may be mounted."""
    real = os.path.realpath(cwd)
    for root in map(os.path.realpath, roots):
        if _within(real, root) and any(_within(root, bad) for bad in forbid):
            return _folder(cwd, real, root, field)
    for bad in forbid:
        if _within(real, bad) or _within(bad, real):
            raise PermissionDenied(f"{cwd} is, holds or lies inside {bad}, which is the controller's own",
                                   field=field)
    for root in map(os.path.realpath, roots):
        if _within(real, root):
            return _folder(cwd, real, root, field)
    allowed = ", ".join(roots) or "none here"
    raise PermissionDenied(f"{cwd} is not under a folder jobs may mount (the controller's mount_roots: {allowed})",
                           field=field)


def inside(path: str, folders: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(_within(real, folder) for folder in folders)


def _folder(cwd: str, real: str, root: str, field: str) -> str:
    if not Path(real).is_dir():
        raise PermissionDenied(f"{cwd} is not a folder", field=field)
    return root


class Sandbox:
    """Keeps a local job from the controller's own files, where the controller may (as root).

    Each job runs in a mount namespace of its own, in which the controller's home is an empty
    folder holding only the run's folder (and its cwd, if in its parent's run folder), the jobs' socket (every call on it needs a token) and
    the stored inputs' trees, read-only (a job finds there only a tree whose digest it knows: the
    folder cannot be listed); the owner's socket, the store and Docker's socket are covered.
    The job then runs with no capabilities, so it cannot undo that, nor reach into the controller
    through /proc (the controller is not dumpable). It keeps the controller's uid and the rest of
    the machine: a local job is not isolated from the host (a container is).
    """

    def __init__(self, home: str, trees: str, jobs_socket: str, cover: list[str], enabled: bool = True) -> None:
        self.home = os.path.realpath(home)
        self.trees = os.path.realpath(trees)
        self.jobs_folder = os.path.dirname(os.path.realpath(jobs_socket))
        # The rest of the home is hidden whole; `cover` is resolved, so a path named twice is one.
        self.cover = sorted({p for p in cover if not _within(p, self.home)})
        # The socket's folder is bound back: it must be a folder of its own, not the home.
        self.available = enabled and os.geteuid() == 0 and not _within(self.home, self.jobs_folder) and _can_unshare()
        self.helper = _helper()

    def wrap(self, workdir: str, cwd: str, command: list[str]) -> list[str]:
        """`command` (the run's wrapper) as it runs confined, or as it is if it cannot be: by the
        sandbox helper (shim/jobnest_sandbox.c, one exec), else by the same steps in a shell."""
        if not self.available:
            return command
        keep = [workdir, self.jobs_folder, self.trees]  # bound back into the emptied home, in this order
        if inside(cwd, [self.home]) and not inside(cwd, [workdir]):
            keep.append(os.path.realpath(cwd))  # its parent's run folder (checked at submit)
        stderr = os.path.join(workdir, "stderr.log")
        if self.helper:
            return [self.helper, stderr, self.home, self.trees, cwd, *keep, "--", *self.cover, "--", *command]
        fds = range(3, 3 + len(keep))
        lines = [f"exec 2>>{q(stderr)}", "set -e",
                 "exec " + " ".join(f"{fd}<{q(path)}" for fd, path in zip(fds, keep)),
                 f"mount -t tmpfs -o mode=0755,size=64k jobnest {q(self.home)}"]
        for fd, path in zip(fds, keep):
            lines.append(f"mkdir -p {q(path)}; mount --no-canonicalize --bind /proc/$$/fd/{fd} {q(path)}")
        lines.append(f"mount -o remount,bind,ro {q(self.trees)}")
        lines += [f"[ ! -e {q(path)} ] || mount --bind /dev/null {q(path)}" for path in self.cover]
        lines += ["exec " + " ".join(f"{fd}<&-" for fd in fds), f"cd {q(cwd)}", "set +e",
                  'exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@"']
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", "\n".join(lines), "sh", *command]


def _helper() -> str:
    """The sandbox helper, as a wheel carries it or `make sandbox` builds it; "" if neither."""
    here = Path(__file__).resolve().parent
    for path in (here / "jobnest-sandbox", here.parents[1] / "build" / "shim" / "jobnest-sandbox"):
        if os.access(path, os.X_OK):
            return str(path)
    return ""


def q(path: str) -> str:
    return shlex.quote(path)


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "setpriv", "--bounding-set=-all",
                               "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def undumpable() -> None:
    """Keep this process's memory, environment and open files (/proc/PID/...) from processes of the
    same uid that lack CAP_SYS_PTRACE, as confined jobs do."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


PR_SET_DUMPABLE = 4
