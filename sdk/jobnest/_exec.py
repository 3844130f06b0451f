"""Programs run as jobs in place of a local exec: the redirect helper behind the LD_PRELOAD shim
(shim/libjobnest_exec.c) and behind the PATH wrappers of `jobnest exec-shims`.

`jobnest exec-remote -- PROG ARGS...` submits PROG as a child of the current job (of nobody
outside a job), streams its stdout and stderr as its own, and exits with its exit code (128+N
for a signal; a helper stopped by a signal cancels the job). The job runs in the same cwd
(local jobs run there; Docker mounts it) with only the variables named in JOBNEST_EXEC_ENV, in
JOBNEST_EXEC_IMAGE when set, with JOBNEST_EXEC_CPU and JOBNEST_EXEC_MEMORY (0.5, 2Gi) when set.
Its signature holds the sha256 of the program's binary and of the
files its arguments name, so an upgraded tool or a changed input runs again while the same
script on the same files reuses every call (JOBNEST_EXEC_REUSE=0: never). A piped or redirected
stdin is sent along as an upload.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from ._client import connect
from ._data import file_sha256, upload
from .errors import JobnestError, Unavailable

# Runs the program with the uploaded stdin: sh -c SCRIPT sh STDIN PROG ARGS...
WITH_STDIN = 'f="$1"; shift; exec "$@" <"$f"'


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _interrupted(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def exec_remote(command: list[str]) -> NoReturn:
    prog, args = command[0], command[1:]
    name = os.path.basename(prog)
    image = os.environ.get("JOBNEST_EXEC_IMAGE", "")
    options: dict[str, object] = {"name": name, "cwd": os.getcwd(), "mount_cwd": True}
    options["env"] = {k: os.environ[k] for k in filter(None, os.environ.get("JOBNEST_EXEC_ENV", "").split(","))
                      if k in os.environ}
    for variable, option in (("JOBNEST_EXEC_CPU", "cpu"), ("JOBNEST_EXEC_MEMORY", "memory")):
        if os.environ.get(variable):  # what the redirected tool asks for (else a job's defaults)
            options[option] = os.environ[variable]
    try:
        if "cpu" in options:
            options["cpu"] = float(str(options["cpu"]))
    except ValueError:
        _fail(2, f"JOBNEST_EXEC_CPU: {options['cpu']!r} is not a share of a core such as 0.5")
    if image:  # the program is looked up in the image, whose content id the signature holds
        options.update(image=image, executor=os.environ.get("JOBNEST_EXEC_EXECUTOR", "docker"))
        path, tool = name, ""  # by name: the image has its own PATH
    else:
        found = prog if "/" in prog else shutil.which(prog)
        if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
            _fail(127, f"{prog}: command not found")
        path = os.path.abspath(found)
        tool = file_sha256(Path(path))
    # The signature holds the tool's binary and the files its arguments name, as they are now:
    # the same call on the same files reuses; an upgraded tool or a changed input runs again.
    files = {a: file_sha256(Path(a)) for a in args if os.path.isfile(a)}
    options["cache_version"] = "exec " + hashlib.sha256(repr((tool, sorted(files.items()))).encode()).hexdigest()
    options["reuse"] = os.environ.get("JOBNEST_EXEC_REUSE", "1") != "0"
    try:
        client = connect(driver=False)
        client.status()  # reachable? ask before consuming stdin, which a local fallback needs
    except Unavailable as e:
        if os.environ.get("JOBNEST_EXEC_FALLBACK") == "local" and not image:
            print(f"jobnest exec: the controller cannot be reached ({e}); running {name} here", file=sys.stderr)
            os.environ.pop("JOBNEST_EXEC_IN_HELPER", None)  # what it runs may be redirected again
            os.execv(path, [prog, *args])
        _fail(127, f"cannot reach the controller to run {name} ({e}); set JOBNEST_EXEC_FALLBACK=local to run "
                   "it here instead")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    job = None
    try:
        argv, stdin = [path, *args], _stdin()
        if stdin is not None:
            options["inputs"] = {"stdin": upload(stdin)}
            argv = ["/bin/sh", "-c", WITH_STDIN, "sh", "{inputs.stdin}", *argv]
        try:
            job = client.submit(argv, **options)
        finally:
            if stdin is not None:
                shutil.rmtree(stdin.parent, ignore_errors=True)
        for stream, data in client.logs(job.uuid, follow=True):
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.buffer.write(data)
            out.flush()
        info = job.wait().info
    except _Interrupted as e:  # the caller was stopped: so is the job
        if job is not None:
            job.cancel()
        sys.exit(128 + e.signum)
    except JobnestError as e:
        _fail(1, f"running {name} as a job: {e}")
    if info.state != "succeeded" and info.exit_code is None:
        print(f"jobnest exec: {name} {info.state}: {info.reason}", file=sys.stderr)
    sys.exit(1 if info.exit_code is None else info.exit_code)


def _stdin() -> Path | None:
    """A pipe or file on stdin, copied to a temporary file (read to its end); None for a terminal,
    nothing, or with JOBNEST_EXEC_STDIN=0 (for a tool that does not read it, in a `while read`
    loop that does)."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return None
    if os.environ.get("JOBNEST_EXEC_STDIN") == "0" or not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        return None
    path = Path(tempfile.mkdtemp(prefix="jobnest-exec-")) / "stdin"  # the same name each time: same upload
    with open(path, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f)
    return path


def write_shims(folder: Path, programs: list[str]) -> list[Path]:
    """A wrapper per program in `folder` that runs the program found now as a job: put `folder`
    first on PATH. It reaches programs the LD_PRELOAD shim cannot (static binaries, tools that
    clear LD_PRELOAD)."""
    helper = os.path.abspath(shutil.which("jobnest") or sys.argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for prog in programs:
        if prog == "jobnest":
            raise JobnestError("jobnest runs the wrappers: it cannot be one", field="programs")
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
