"""A block: one Slurm allocation that runs several jobnest runs smaller than a core, each with its
own cpu share (a cgroup, as a local run has, where the node lets the allocation make one), as
Parsl's blocks and dask-jobqueue's workers do. Slurm allocates whole CPUs: without blocks a
`cpu=0.25` run would hold a CPU of its own.

    python -m jobnest_controller.executors.slurm_block FOLDER IDLE_SECONDS
    python -m jobnest_controller.executors.slurm_block --task FOLDER WRAPPER    (a job array's task)

The controller hands a run over as a ticket (`FOLDER/inbox/RUN.json`: argv, env, cwd, work dir,
attempt, cpu), renamed into place whole. The block starts it through the local executor's
wrapper, so the run's logs, pid and exit code land in its work dir as a local run's do; a
`cancel.ATTEMPT` file in the work dir stops it (SIGTERM, then SIGKILL; the block then records
its exit code, 128 + the signal). Idle for IDLE_SECONDS,
the block closes its inbox (renamed to `closed`: the controller then makes another block), runs
what arrived meanwhile, and exits once all its runs have ended.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..cgroups import CpuLimiter
from .local import KILL_GRACE, WRAPPER, kill_group

TICK = 0.05
NOT_SHARED = 97  # the exit code of a block or task whose node does not see the folder it was given


def serve(folder: Path, idle: float) -> None:
    inbox, started = folder / "inbox", folder / "started"
    started.mkdir(exist_ok=True)
    limiter = CpuLimiter(group="jobnest-block")
    runs: dict[str, tuple[subprocess.Popen[bytes], dict, float]] = {}  # run -> (process, ticket, when stopped)
    busy = time.monotonic()
    open_ = True
    while open_ or runs or any(inbox.glob("*.json")):
        for ticket_path in sorted(inbox.glob("*.json")):
            name = ticket_path.stem
            ticket = json.loads(ticket_path.read_text())
            ticket_path.rename(started / ticket_path.name)
            procs = limiter.create(name, ticket["cpu_millis"])
            try:
                runs[name] = (subprocess.Popen(
                    ["/bin/sh", "-c", WRAPPER, "sh", ticket["workdir"], procs or "", str(ticket["attempt"]),
                     *ticket["argv"]], cwd=ticket["cwd"], env=ticket["env"], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True), ticket, 0.0)
            except OSError as e:  # its folder is not on this node, say: the run fails, the block goes on
                limiter.remove(name)
                with open(Path(ticket["workdir"], "stderr.log"), "a") as log:
                    print(f"jobnest: its block could not start it: {e}", file=log)
                Path(ticket["workdir"], f"exit_code.{ticket['attempt']}").write_text("126")
        now = time.monotonic()
        for name, (proc, ticket, stopped) in list(runs.items()):
            if proc.poll() is not None and not limiter.members(name):
                limiter.remove(name)
                del runs[name]
                code = Path(ticket["workdir"], f"exit_code.{ticket['attempt']}")
                if not code.exists():  # killed with its wrapper: how it ended is the block's to say
                    code.write_text(str(128 - proc.returncode if proc.returncode < 0 else proc.returncode))
            elif Path(ticket["workdir"], f"cancel.{ticket['attempt']}").exists():
                sig = signal.SIGKILL if stopped and now - stopped > KILL_GRACE else signal.SIGTERM
                kill_group(proc.pid, sig)
                limiter.kill(name, sig)
                runs[name] = (proc, ticket, stopped or now)
        if runs:
            busy = now
        elif open_ and now - busy > idle:
            inbox.rename(folder / "closed")  # a ticket renamed in from now on fails: it goes elsewhere
            inbox, open_ = folder / "closed", False
        time.sleep(TICK)


def task(folder: Path, wrapper: str) -> None:
    """One task of a job array (whole-core runs started together): its ticket, `folder/INDEX.json`,
    run through the Slurm executor's wrapper in its own folder and environment."""
    ticket = json.loads((folder / f"{os.environ['SLURM_ARRAY_TASK_ID']}.json").read_text())
    slurm = {k: v for k, v in os.environ.items() if k.startswith("SLURM_")}
    if not os.path.isdir(ticket["workdir"]):
        sys.exit(NOT_SHARED)
    os.chdir(ticket["cwd"])
    os.execve("/bin/sh", ["/bin/sh", wrapper, ticket["workdir"], str(ticket["attempt"]), *ticket["argv"]],
              {**ticket["env"], **slurm})


if __name__ == "__main__":  # FOLDER IDLE_SECONDS (a block), or --task FOLDER WRAPPER (an array's task)
    if sys.argv[1] == "--task":
        task(Path(sys.argv[2]), sys.argv[3])
    else:
        serve(Path(sys.argv[1]), float(sys.argv[2]))
