"""Programs run as jobs in place of a local exec: the redirect helper behind the LD_PRELOAD shim
(shim/libjobnest_exec.c) and behind the PATH wrappers of `jobnest exec-shims`.

`jobnest exec-remote -- PROG ARGS...` submits PROG as a child of the current job (of nobody
outside a job), streams its stdout and stderr as its own, and exits with its exit code (128+N
for a signal). The job runs in the same cwd (local jobs run there; Docker mounts it) with only
the variables named in JOBNEST_EXEC_ENV, in JOBNEST_EXEC_IMAGE when set. Its signature holds the
sha256 of the program's binary, so an upgraded tool is not reused while the same script run
again reuses every call. A piped or redirected stdin is sent along as an upload.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from ._client import connect
from ._data import upload
from .errors import JobnestError, Unavailable

# Runs the program with the uploaded stdin: sh -c SCRIPT sh STDIN PROG ARGS...
WITH_STDIN = 'f="$1"; shift; exec "$@" <"$f"'


def exec_remote(command: list[str]) -> NoReturn:
    prog, args = command[0], command[1:]
    name = os.path.basename(prog)
    path = prog if "/" in prog else shutil.which(prog)
    if path is None or not os.access(path, os.X_OK) or os.path.isdir(path):
        _fail(127, f"{prog}: command not found")
    path = os.path.abspath(path)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    env = {k: os.environ[k] for k in filter(None, os.environ.get("JOBNEST_EXEC_ENV", "").split(",")) if k in os.environ}
    options: dict[str, object] = {"name": name, "cwd": os.getcwd(), "env": env,
                                  "cache_version": f"tool sha256:{digest}"}
    if os.environ.get("JOBNEST_EXEC_IMAGE"):
        options.update(image=os.environ["JOBNEST_EXEC_IMAGE"],
                       executor=os.environ.get("JOBNEST_EXEC_EXECUTOR", "docker"))
    try:
        client = connect(driver=False)
        client.status()  # reachable? ask before consuming stdin, which a local fallback needs
    except Unavailable as e:
        if os.environ.get("JOBNEST_EXEC_FALLBACK") == "local":
            print(f"jobnest exec: the controller cannot be reached ({e}); running {name} here", file=sys.stderr)
            os.execv(path, [prog, *args])
        _fail(127, f"cannot reach the controller to run {name} ({e}); set JOBNEST_EXEC_FALLBACK=local to run "
                   "it here instead")
    try:
        # In an image the program is looked up there; here, it is the binary just hashed.
        argv, stdin = [name if "image" in options else path, *args], _stdin()
        if stdin is not None:
            options["inputs"] = {"stdin": upload(stdin)}
            argv = ["/bin/sh", "-c", WITH_STDIN, "sh", "{inputs.stdin}", *argv]
        job = client.submit(argv, **options)
        for stream, data in client.logs(job.uuid, follow=True):
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.buffer.write(data)
            out.flush()
        info = job.wait().info
    except JobnestError as e:
        _fail(1, f"running {name} as a job: {e}")
    if info.state != "succeeded" and info.exit_code is None:
        print(f"jobnest exec: {name} {info.state}: {info.reason}", file=sys.stderr)
    sys.exit(1 if info.exit_code is None else info.exit_code)


def _stdin() -> Path | None:
    """A pipe or file on stdin, copied to a temporary file (read to its end); None for a terminal
    or nothing."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
        return None
    path = Path(tempfile.mkdtemp(prefix="jobnest-exec-")) / "stdin"  # the same name each time: same upload
    with open(path, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f)
    return path


def write_shims(folder: Path, programs: list[str]) -> list[Path]:
    """A wrapper per program in `folder` that runs the program found now as a job: put `folder`
    first on PATH. It reaches programs the LD_PRELOAD shim cannot (static binaries, tools that
    clear LD_PRELOAD)."""
    helper = shutil.which("jobnest") or sys.argv[0]
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for prog in programs:
        found = shutil.which(prog, path=os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                         if Path(p).resolve() != folder.resolve()))
        if "/" in prog or found is None:
            raise JobnestError(f"{prog!r} is not a program on PATH", field="programs")
        wrapper = folder / prog
        wrapper.write_text(f'#!/bin/sh\nexec {_quote(helper)} exec-remote -- {_quote(found)} "$@"\n')
        wrapper.chmod(0o755)
        made.append(wrapper)
    return made


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _fail(code: int, message: str) -> NoReturn:
    print(f"jobnest exec: {message}", file=sys.stderr)
    sys.exit(code)
