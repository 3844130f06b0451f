"""Programs run as jobs in place of a local exec: the redirect helper behind the LD_PRELOAD shim
(shim/libjobnest_exec.c) and behind the PATH wrappers of `jobnest exec-shims`.

`jobnest exec-remote -- PROG ARGS...` submits PROG as a job named after the call (`gzip -k
reads.fq`), streams its stdout and stderr as its own, and exits with its exit code (128+N for a
signal; a helper stopped by a signal cancels the job). Inside a job it is a child of that job;
outside, of one job per calling process (the outermost with the shim: the `make` or script the
user ran), which a keeper process records and ends when the caller does. The job runs in the same
cwd (local jobs run there; Docker mounts it) with only the variables named in JOBNEST_EXEC_ENV, in
JOBNEST_EXEC_IMAGE when set, with JOBNEST_EXEC_CPU and JOBNEST_EXEC_MEMORY (0.5, 2Gi) when set.
Its signature holds the sha256 of the program's binary and of the files its arguments name, so an
upgraded tool or a changed input runs again while the same script on the same files reuses every
call (JOBNEST_EXEC_REUSE=0: never). A piped or redirected stdin is sent along as an upload. The
files a call writes in its folder (outside hidden ones) are kept as its output: a reused call
lays out those that are missing, as `make` expects after `gzip -k`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from ._client import Client, connect
from ._data import file_sha256, lay_out, upload
from .errors import JobnestError, Unavailable
from .v1 import jobnest_pb2 as pb

# Runs the program (with the uploaded stdin, if any: sh -c SCRIPT sh STDIN|"" PROG ARGS...), then
# copies what changed in its folder meanwhile into its output: by ctime where `find` can (a tool
# such as gzip gives what it writes an older mtime), else by mtime (BusyBox). File times tick
# coarsely (a few ms): the pause makes whatever the program writes newer than the mark.
CALL = """f="$1"; shift; t=$(mktemp) || exit 70; sleep 0.01 2>/dev/null || sleep 1
if [ -n "$f" ]; then "$@" <"$f"; else "$@"; fi; s=$?
by=-newer; find "$t" -cnewer "$t" >/dev/null 2>&1 && by=-cnewer
find . -xdev -name '.?*' -prune -o -type f "$by" "$t" -print | while IFS= read -r p; do
  mkdir -p "$JOBNEST_OUTPUT/${p%/*}" && cp -p "$p" "$JOBNEST_OUTPUT/$p"; done
rm -f "$t"; exit $s"""
NAME_LENGTH = 80  # of a call's job name: the program and as much of its arguments as fits


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _interrupted(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def exec_remote(command: list[str]) -> NoReturn:
    prog, args = command[0], command[1:]
    name = os.path.basename(prog)
    image = os.environ.get("JOBNEST_EXEC_IMAGE", "")
    called = " ".join([name, *args])
    called = called if len(called) <= NAME_LENGTH else called[:NAME_LENGTH - 1] + "…"
    options: dict[str, object] = {"name": called, "cwd": os.getcwd(), "mount_cwd": True}
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
        if not os.environ.get("JOBNEST_JOB"):
            _join_caller(client)
        stdin = _stdin()
        if stdin is not None:
            options["inputs"] = {"stdin": upload(stdin)}
        try:
            job = client.submit(["/bin/sh", "-c", CALL, "sh", "{inputs.stdin}" if stdin else "", path, *args],
                                **options)
        finally:
            if stdin is not None:
                shutil.rmtree(stdin.parent, ignore_errors=True)
        for stream, data in client.logs(job.uuid, follow=True):
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.buffer.write(data)
            out.flush()
        info = job.wait().info
        if info.reused and info.output:
            _lay_out_missing(client, info.output)
    except _Interrupted as e:  # the caller was stopped: so is the job
        if job is not None:
            job.cancel()
        sys.exit(128 + e.signum)
    except JobnestError as e:
        _fail(1, f"running {name} as a job: {e}")
    if info.state != "succeeded" and info.exit_code is None:
        print(f"jobnest exec: {name} {info.state}: {info.reason}", file=sys.stderr)
    sys.exit(1 if info.exit_code is None else info.exit_code)


def _lay_out_missing(client: Client, output: str) -> None:
    """The files a reused call wrote in its folder, where they are missing now (those there are
    left alone: another call may be writing them)."""
    manifest = client.manifest(output)
    missing = [e for e in manifest.entries if not os.path.lexists(e.path)]
    if missing:
        lay_out(pb.Manifest(entries=missing), Path.cwd(), lambda blob: client.read_blob(blob, output))


def _join_caller(client: Client) -> None:
    """Submit as the job of the calling process; the first call of a caller starts the keeper
    that records that job. Where /proc does not tell who called, each call is a job of its own."""
    caller = _caller()
    if caller is None:
        return
    folder = Path(os.environ.get("JOBNEST_HOME") or Path.home() / ".jobnest") / "exec"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = folder / f"{socket.gethostname()}-{caller[0]}-{caller[1]}"  # KEY.lock, KEY.json
    with open(f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _state(key)
        if state is None:
            keeper = subprocess.Popen([sys.executable, "-m", "jobnest._exec", str(caller[0]), caller[1], str(key)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
            keeper.stdout.readline()  # type: ignore[union-attr]  # "ready", or nothing if it failed
            state = _state(key)
    if state is not None:
        client._join_driver(state["uuid"], state["token"])


def _state(key: Path) -> dict[str, str] | None:
    """The caller's job, as its keeper recorded it, while the keeper lives."""
    try:
        state = json.loads(Path(f"{key}.json").read_text())
        os.kill(state["keeper"], 0)
    except (OSError, ValueError, KeyError):
        return None
    return state


def _caller() -> tuple[int, str] | None:
    """The calling process, the outermost ancestor with the shim loaded (the `make` or script the
    user ran), and its start time, so that a pid used again is another caller. None when no
    parent has the shim: a program that exec'd the tool in its own place (`bash -c wc`), or a
    PATH wrapper's call."""
    pid, parent = 0, os.getppid()
    while parent > 1 and b"libjobnest_exec" in _read(f"/proc/{parent}/environ"):
        pid, parent = parent, _parent(parent)
    started = _started(pid) if pid else ""
    return (pid, started) if started else None


def _parent(pid: int) -> int:
    fields = _read(f"/proc/{pid}/stat").rpartition(b")")[2].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _started(pid: int) -> str:
    fields = _read(f"/proc/{pid}/stat").rpartition(b")")[2].split()
    return fields[19].decode() if len(fields) > 19 else ""


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def keep(pid: int, started: str, key: Path) -> None:
    """The keeper: record the caller `pid` as a driver job, tell the helper, and end the job when
    the caller has gone, failed if a call of it failed."""
    argv = [a.decode(errors="replace") for a in _read(f"/proc/{pid}/cmdline").split(b"\0") if a]
    if not argv:
        return
    called = " ".join([os.path.basename(argv[0]), *argv[1:]])
    client = connect()
    client._ensure_driver(name=called[:NAME_LENGTH], argv=argv, cwd=os.readlink(f"/proc/{pid}/cwd"))
    assert client.driver is not None
    with open(os.open(f"{key}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump({"uuid": client.driver.uuid, "token": client._driver_token, "keeper": os.getpid()}, f)
    print("ready", flush=True)
    sys.stdout.close()
    try:
        while _started(pid) == started:
            time.sleep(0.5)
        calls = client.list(parent=client.driver.uuid)
        client.finish(0 if all(c.state in ("succeeded", "queued", "running") for c in calls) else 1)
    finally:
        for suffix in (".json", ".lock"):
            with contextlib.suppress(OSError):
                os.unlink(f"{key}{suffix}")


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


if __name__ == "__main__":  # the keeper of a caller's job: python -m jobnest._exec PID STARTED KEY
    keep(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
