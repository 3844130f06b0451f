"""The `jobnest` command: parse, call one SDK function, render. No logic of its own."""

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from . import _render as render
from ._client import (Client, JobInfo, connect, ensure_local_controller, local_controller_healthy,
                      parse_duration)
from ._data import upload
from ._exec import exec_remote, write_shims
from .errors import JobnestError


def _home(ctx: click.Context) -> Path:
    return Path(ctx.obj["home"] or os.environ.get("JOBNEST_HOME") or Path.home() / ".jobnest")


def _client(ctx: click.Context) -> Client:
    return connect(ctx.obj["controller"] or None, ctx.obj["token"], home=ctx.obj["home"], driver=False)


def _seconds(_ctx: click.Context, param: click.Parameter, value: str | None) -> float:
    if not value:
        return 0.0
    try:
        seconds = parse_duration(value)
    except JobnestError as e:
        raise click.BadParameter(e.problem) from None
    if not seconds and param.name == "expires_in":
        raise click.BadParameter("a token that expires at once is no token")
    return seconds


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _Group(click.Group):
    """Turns jobnest errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobnestError as e:
            click.echo(f"jobnest: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--controller", envvar="JOBNEST_CONTROLLER", default="", help="Controller address (default: local).")
@click.option("--token", envvar="JOBNEST_TOKEN", default="", help="Token for a TCP controller.")
@click.option("--home", envvar="JOBNEST_HOME", default="", help="Local controller home (default ~/.jobnest).")
@click.pass_context
def main(ctx: click.Context, controller: str, token: str, home: str) -> None:
    """jobnest: everything is a job."""
    ctx.obj = {"controller": controller, "token": token, "home": home}


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def controller(args: tuple[str, ...]) -> NoReturn:
    """Serve a controller (see `jobnest controller --help`)."""
    os.execv(sys.executable, [sys.executable, "-m", "jobnest_controller", *args])


@main.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Start the local controller (it stays up until `jobnest down`)."""
    home = _home(ctx)
    ensure_local_controller(home, idle_timeout=0)
    click.echo(f"local controller up: unix://{home / 'controller.sock'}")


@main.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the local controller; running jobs go on and are re-adopted at the next start."""
    home = _home(ctx)
    pid_file = home / "controller.pid"
    if not pid_file.exists() or not local_controller_healthy(home / "controller.sock"):
        click.echo("local controller is not running")  # a stale pid file names someone else
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        click.echo("local controller is not running")
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and local_controller_healthy(home / "controller.sock", timeout=0.5):
        time.sleep(0.1)
    click.echo("local controller stopped")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the controller's address, store, nodes and run counts."""
    if not ctx.obj["controller"] and not local_controller_healthy(_home(ctx) / "controller.sock"):
        if as_json:
            _emit({"running": False})
        else:
            click.echo("local controller is not running (it starts on demand, or with `jobnest up`)")
        return
    s = _client(ctx).status()
    if as_json:
        _emit({"running": True, **s})
        return
    click.echo(f"controller {s['address']} (pid {s['pid']}, version {s['version']})\nstore {s['store']}")
    for n in s["nodes"]:
        enforced = "enforced" if n["cpu_enforced"] else "not enforced"
        click.echo(f"node {n['name']}: cpu {n['cpu_used']:g}/{n['cpu']:g} ({enforced}), "
                   f"memory {n['memory_used'] / 2**30:.2f}/{n['memory'] / 2**30:.2f} GiB")
    click.echo("runs: " + (", ".join(f"{k} {v}" for k, v in sorted(s["runs"].items())) or "none"))
    if s["disk"]:
        click.echo("disk: " + ", ".join(f"{part} {_size(n)}" for part, n in sorted(s["disk"].items())))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@main.command()
@click.option("--older-than", callback=_seconds, default="30d", show_default=True,
              help="Keep what ended (or was stored) more recently than this: 90s, 12h, 30d.")
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx: click.Context, older_than: float, dry_run: bool, as_json: bool) -> None:
    """Remove job history, runs, and data that nothing needs (admins only). Kept: every job tree
    with a job that is live, recent or pinned; the runs those name or that ended recently (they
    may be reused); the data they read or made; uploads stored or named recently."""
    done = _client(ctx).collect(older_than, dry_run)
    if as_json:
        _emit(done)
        return
    counts = ", ".join(f"{done[k]} {k}" for k in ("jobs", "runs", "data", "blobs", "programs"))
    click.echo(f"{'would remove' if dry_run else 'removed'} {counts}: {_size(done['bytes'])}"
               f"{' to free' if dry_run else ' freed'}")


@main.command()
@click.argument("job")
@click.option("--unpin", is_flag=True, help="Let `gc` remove it again once nothing else keeps it.")
@click.pass_context
def pin(ctx: click.Context, job: str, unpin: bool) -> None:
    """Keep JOB's tree, its runs and their outputs from `jobnest gc`."""
    _client(ctx).pin(job, unpin)


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--name", default=None)
@click.option("--cpu", type=float, default=None, help="Share of a core, e.g. 0.25.")
@click.option("--memory", default=None, help="e.g. 256Mi.")
@click.option("--image", default=None)
@click.option("--executor", default=None)
@click.option("--env", "env", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--no-reuse", is_flag=True, help="Always start a new run.")
@click.option("--retries", type=int, default=0, help="Run a failed attempt again, up to this many times.")
@click.option("--input", "inputs", multiple=True,
              help="NAME=PATH: upload a file or folder as input NAME ({inputs.NAME} in COMMAND); repeatable.")
@click.option("--cwd", "cwd", type=click.Path(file_okay=False, resolve_path=True), default=None,
              help="Run in this folder of the controller's machine, not in the job's own output folder.")
@click.option("--mount-cwd", is_flag=True,
              help="In a container, mount the --cwd folder (else this one) at its own path and run there.")
@click.option("--detach", "-d", is_flag=True, help="Print the job uuid and return.")
@click.option("--each", type=click.File(), default=None,
              help="One job per line of this file, {item} in COMMAND replaced by the line.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, name: str | None, cpu: float | None, memory: str | None, image: str | None,
        executor: str | None, env: tuple[str, ...], no_reuse: bool, retries: int, inputs: tuple[str, ...],
        cwd: str | None, mount_cwd: bool, detach: bool, each: Any, command: tuple[str, ...]) -> None:
    """Run COMMAND as a job, stream its output, and exit with its exit code. It runs in its own
    output folder, as every job does, unless --cwd (or --mount-cwd) names another."""
    uploads = {}
    for item in inputs:
        key, _, path = item.partition("=")
        if not (key and path):
            raise click.BadParameter(f"{item!r} is not NAME=PATH", param_hint="--input")
        uploads[key] = upload(path)
    variables = {}
    for item in env:  # KEY=VALUE, or KEY alone to pass this shell's value on
        key, _, value = item.partition("=")
        variables[key] = value if "=" in item else os.environ.get(key, "")
    options = dict(name=name, cpu=cpu, memory=memory, image=image, executor=executor, env=variables,
                   reuse=not no_reuse, cwd=cwd or (os.getcwd() if mount_cwd else None), retries=retries,
                   inputs=uploads, mount_cwd=mount_cwd)
    if each is not None:
        _run_each(ctx, list(command), [line.strip() for line in each if line.strip()], options, detach)
        return
    client = _client(ctx)
    job = client.submit(list(command), **options)
    if detach:
        click.echo(job.uuid)
        return
    try:
        _copy_logs(client.logs(job.uuid, follow=True))
        info = job.wait().info
    except KeyboardInterrupt:
        client.cancel(job.uuid)
        click.echo(f"\njobnest: interrupted: job {job.uuid[:8]} is cancelled (with --detach a job goes on "
                   "without you)", err=True)
        sys.exit(130)
    if info.state != "succeeded":
        click.echo(f"jobnest: job {job.uuid[:8]} {info.state}: {info.reason}", err=True)
    sys.exit(0 if info.state == "succeeded" else (info.exit_code or 1))


def _run_each(ctx: click.Context, command: list[str], items: list[str], options: dict[str, Any], detach: bool) -> None:
    """A batch: this command is recorded as a driver job, so the tree groups the batch under it."""
    client = connect(ctx.obj["controller"] or None, ctx.obj["token"], home=ctx.obj["home"])
    jobs = client.map(command, items, **options)
    if detach:
        click.echo("\n".join(j.uuid for j in jobs))
        return
    client.wait([j.uuid for j in jobs])
    infos = [j.info for j in jobs]
    click.echo(render.table(infos))
    failed = [i for i in infos if i.state != "succeeded"]
    click.echo(f"{len(infos)} jobs: {len(infos) - len(failed)} succeeded, {len(failed)} did not")
    client.finish(1 if failed else 0)
    sys.exit(1 if failed else 0)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--name", default=None)
@click.option("--cpu", type=float, default=0.1, show_default=True, help="The runner's share of a core.")
@click.option("--image", default=None, help="Image for the runner and, by default, its children.")
@click.option("--executor", default=None, help="Executor for the runner and, by default, its children.")
@click.option("--python", default="", help="The Python that runs it: by default `python` in an image, else this one.")
@click.option("--wait", "-w", "wait", is_flag=True, help="Wait for the runner to end and print its tree.")
@click.argument("program", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def submit(ctx: click.Context, name: str | None, cpu: float, image: str | None, executor: str | None, python: str,
           wait: bool, program: Path, args: tuple[str, ...]) -> None:
    """Run a Python PROGRAM as a runner job, its folder uploaded; print the job's uuid."""
    job = _client(ctx).submit_program(program, *args, name=name, cpu=cpu, image=image, executor=executor,
                                      python=python)
    click.echo(job.uuid)
    if wait:
        job.wait()
        click.echo(job.tree())
        sys.exit(0 if job.state == "succeeded" else 1)


@main.command(name="ls")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable).")
@click.option("--parent", default="", help="Only the children of this job.")
@click.option("--roots", is_flag=True, help="Only jobs nobody spawned.")
@click.option("--name", default="", help="Only jobs whose name matches, as in a shell: 'sample-*'.")
@click.option("--limit", type=int, default=0, help="At most this many: the newest.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ls(ctx: click.Context, states: tuple[str, ...], parent: str, roots: bool, name: str, limit: int,
       as_json: bool) -> None:
    """List jobs, newest first."""
    jobs = _client(ctx).list(parent=parent, states=list(states), roots=roots, limit=limit, name=name,
                             newest_first=True)
    _listing(jobs, as_json, render.table)


@main.command()
@click.argument("job", required=False)
@click.option("--last", type=int, default=3, help="Without JOB: the trees of the last N root jobs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tree(ctx: click.Context, job: str | None, last: int, as_json: bool) -> None:
    """Show a job tree: state, name, id, cpu, duration, and what was reused."""
    client = _client(ctx)
    if job:
        uuid = client.get(job).uuid
        jobs = list(client.list(subtree=uuid, include_reused=True))
        _listing(jobs, as_json, lambda js: render.tree_with_summary(js, uuid))
        return
    tops = list(client.list(roots=True))[-last:]
    # A later tree that reused an earlier one's jobs lists them again (to show where they ran).
    jobs = list({j.uuid: j for t in tops for j in client.list(subtree=t.uuid, include_reused=True)}.values())
    _listing(jobs, as_json, lambda js: "\n\n".join(render.tree(js, t.uuid) for t in tops) or "no jobs")


@main.command()
@click.argument("job", required=False)
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between redraws at most.")
@click.pass_context
def watch(ctx: click.Context, job: str | None, interval: float) -> None:
    """A live tree of JOB (default: the newest root job), redrawn as states change, until all ended."""
    client = _client(ctx)
    if job:
        root = client.get(job).uuid
    else:
        roots = list(client.list(roots=True))
        if not roots:
            click.echo("no jobs")
            return
        root = roots[-1].uuid
    events = client.watch(subtree=root)
    while True:
        jobs = list(client.list(subtree=root, include_reused=True))
        tty = sys.stdout.isatty()
        click.echo("\x1b[H\x1b[2J" if tty else "", nl=False)
        click.echo(render.screen(jobs, root, shutil.get_terminal_size().lines if tty else 0))
        if all(j.state in ("succeeded", "failed", "cancelled") for j in jobs):
            return
        next(events)  # wait for a change, then let a burst of them settle
        time.sleep(interval)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; any but a loopback one asks each visitor to log in with a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port.")
@click.option("--login/--no-login", default=None,
              help="Ask for a token even on a loopback address (default: only elsewhere).")
@click.option("--tes-file-root", "tes_file_roots", multiple=True, envvar="JOBNEST_TES_FILE_ROOTS",
              type=click.Path(exists=True, file_okay=False, resolve_path=True),
              help="A host folder the TES API may read and write for file:// URLs, as the user running this "
                   "(repeatable; none by default).")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, login: bool | None, tes_file_roots: tuple[str, ...]) -> None:
    """Serve the web monitor: job trees, live, with logs, why and actions."""
    from .web import loopback, serve

    if login is False and not loopback(host):
        raise click.BadParameter("on an address other than loopback, visitors must log in", param_hint="--no-login")
    client = _client(ctx)  # on the local default, starts the controller
    # The local controller stops when idle; a page loaded later starts it again.
    revive = None if ctx.obj["controller"] else lambda: ensure_local_controller(_home(ctx))
    try:
        serve(client.address, ctx.obj["token"], host, port, login, revive=revive, tes_file_roots=tes_file_roots,
              ready=lambda url: click.echo(f"jobnest web: serving {url}"))
    except OSError as e:
        raise click.ClickException(f"cannot serve on {host}:{port}: {e.strerror}") from None


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, job: str, as_json: bool) -> None:
    """Show one job: its state and why, its run, resources and command."""
    info = _client(ctx).get(job)
    if as_json:
        _emit(info.to_dict())
        return
    for key, value in info.to_dict().items():
        if key == "spec":  # its parts that matter are shown above; --json has all of it
            continue
        if key == "attempts":
            value = "".join(f"\n  {render.attempt(a)}" for a in value)
        elif key in ("created_at", "started_at", "finished_at") and value:
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        click.echo(f"{key + ':':<22}{' '.join(value) if isinstance(value, tuple) else value}")


@main.command()
@click.argument("job")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def download(ctx: click.Context, job: str, dest: Path) -> None:
    """Fetch JOB's output files into the folder DEST, once the job has succeeded."""
    click.echo(_client(ctx).job(job).output.download(dest))


@main.command()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
@click.pass_context
def logs(ctx: click.Context, job: str, follow: bool) -> None:
    """Print a job's stdout and stderr."""
    _copy_logs(_client(ctx).logs(job, follow=follow))


@main.command()
@click.argument("job")
@click.pass_context
def cancel(ctx: click.Context, job: str) -> None:
    """Cancel a job and its whole subtree."""
    cancelled = _client(ctx).cancel(job)
    click.echo(f"cancelled {len(cancelled)} job(s)")


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def why(ctx: click.Context, job: str, as_json: bool) -> None:
    """Say whether a job ran or reused a run, and what differed from the nearest earlier run."""
    w = _client(ctx).why(job)
    if as_json:
        _emit(w)
        return
    click.echo(w["explanation"])
    for part, h in w["parts"].items():
        mark = "≠" if part in w["differing"] else " "
        click.echo(f"  {mark} {part:<14} {h['hash'][:12]}" + (f"  (was {h['compared'][:12]})" if mark == "≠" else ""))


@main.command()
@click.argument("run")
@click.pass_context
def invalidate(ctx: click.Context, run: str) -> None:
    """Mark RUN's result bad (a run uuid or prefix, as `show` prints): it is never reused again."""
    _client(ctx).invalidate(run)
    click.echo(f"run {run} will not be reused")


@main.command("exec-remote", context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_remote_command(command: tuple[str, ...]) -> NoReturn:
    """Run COMMAND as a child job, as if here: its output and exit code (the shim's helper)."""
    exec_remote(list(command))


@main.command("exec-shims")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.argument("programs", nargs=-1, required=True)
def exec_shims(folder: Path, programs: tuple[str, ...]) -> None:
    """Write a wrapper per PROGRAM into FOLDER that runs it as a job; put FOLDER first on PATH."""
    for wrapper in write_shims(folder, list(programs)):
        click.echo(wrapper)


@main.group()
def token() -> None:
    """Tokens for people and drivers on a TCP controller."""


@token.command(name="create")
@click.argument("name")
@click.option("--expires-in", callback=_seconds, default=None, help="Expire after this long: 30m, 12h, 90d.")
@click.pass_context
def token_create(ctx: click.Context, name: str, expires_in: float) -> None:
    """Create a token for the user NAME and print it (it is shown only once). NAME owns what the
    token submits, and the token sees only NAME's jobs and data."""
    click.echo(_client(ctx).create_token(name, expires_in))


@token.command(name="ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_ls(ctx: click.Context, as_json: bool) -> None:
    """List the user tokens (never the tokens themselves)."""
    tokens = _client(ctx).tokens()
    if as_json:
        _emit(tokens)
        return
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"  # noqa: E731
    for t in tokens:
        click.echo(f"{t['name']:<24} created {stamp(t['created_at'])}  expires {stamp(t['expires_at'])}")


@token.command(name="revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke user NAME's token at once; NAME's jobs stay, and a new token may be made for NAME."""
    _client(ctx).revoke_token(name)


def _listing(jobs: Iterator[JobInfo] | list[JobInfo], as_json: bool, text: Callable[[list[JobInfo]], str]) -> None:
    jobs = list(jobs)
    if as_json:  # a listing carries no argv nor attempts (`show` has them): not shown empty
        _emit([{k: v for k, v in j.to_dict().items() if k not in ("argv", "attempts", "spec")} for j in jobs])
    else:
        click.echo(text(jobs))


def _copy_logs(chunks: Iterator[tuple[str, bytes]]) -> None:
    for stream, data in chunks:
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(data)
        out.flush()
