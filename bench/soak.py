"""`python bench/soak.py`: SIGKILL the controller again and again while a workflow runs, then count
what was lost, what ran twice and what is stuck. Prints a table (also appended to docs/bench.md).

Each round of the workflow is six jobs, submitted in one batch with a request id (sent again
after a controller's death until it is answered):

    make     writes a file into its output                      -> succeeded
    flaky    fails its first attempt, retries=1                  -> succeeded, attempt 2
    use      reads make's output (inputs=)                       -> succeeded
    after    when=make.succeeded & ~flaky.failed                 -> succeeded
    broken   exits 3                                             -> failed
    never    when=broken.succeeded                               -> cancelled

Every attempt of every job appends "run attempt" to a ledger outside the controller's home: an
attempt found twice ran twice. Meanwhile a killer SIGKILLs the controller at random moments
(0.2 to 1.5 s apart) and starts it again on the same home: `--kills` times, on the local executor
and on Docker (`--only` runs one section). Then, with PostgreSQL, two controllers with homes of their own share one store:
the active one is killed `--failovers` times, the other takes over, and the killed one comes back
as the standby.
"""

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jobnest  # noqa: E402
from jobnest._client import Batch  # noqa: E402
from tests import postgres  # noqa: E402

TOKEN = "soak-admin-token-0123456789"
BUSYBOX = "jobnest/busybox:latest"
ENGINE = "unix:///var/run/docker.sock"
EXPECTED = {"make": "succeeded", "flaky": "succeeded", "use": "succeeded", "after": "succeeded",
            "broken": "failed", "never": "cancelled"}


class Controller:
    """A controller process on `home`, started again after each kill."""

    def __init__(self, home: Path, store: str, docker: bool, mounts: Path) -> None:
        self.home, self.store, self.docker, self.mounts = home, store, docker, mounts
        self.proc: subprocess.Popen[str] | None = None
        with socket.socket() as probe:  # one port for all its lives: clients reconnect to it
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.address = ""

    def spawn(self) -> subprocess.Popen[str]:
        self.home.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "jobnest_controller", "--home", str(self.home), "--listen", f"127.0.0.1:{self.port}",
                "--docker", ENGINE if self.docker else "none", "--mount-root", str(self.mounts)]
        if self.store:
            args += ["--store", self.store]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.home / "log", "a"), text=True,
                                     env={**os.environ, "JOBNEST_ADMIN_TOKEN": TOKEN})
        return self.proc

    def serving(self) -> str:
        """Wait until it serves (it may first wait for the store's lease); its address."""
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            raise RuntimeError(f"controller on {self.home} did not start: {line!r}")
        self.address = f"127.0.0.1:{line.split()[1]}"
        return self.address

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Workflow:
    """Rounds of six jobs, submitted while controllers die; what each round was answered."""

    def __init__(self, ledger: Path, docker: bool, mounts: Path) -> None:
        self.ledger, self.docker, self.mounts = ledger, docker, mounts
        self.rounds: list[list[str]] = []  # job uuids, in the order of EXPECTED
        self.sent = 0

    def specs(self, client: jobnest.Client, tag: str) -> list[Any]:
        mark = f'echo "$JOBNEST_RUN $JOBNEST_JOB" >> {self.ledger}/ledger;'
        where: dict[str, Any] = {"cpu": 0.1}
        if self.docker:  # the ledger is a host folder under the controller's mount roots
            where |= {"executor": "docker", "image": BUSYBOX, "cwd": str(self.mounts), "mount_cwd": True}
        flag = f"{self.ledger}/flaky-{tag}"
        batch = Batch(client)  # built here, sent by `submit_until` with its request id
        make = batch.submit(["sh", "-c", f"{mark} echo {tag} > {{output}}/made; sleep 0.3"], name="make", **where)
        flaky = batch.submit(["sh", "-c", f"{mark} if [ -e {flag} ]; then exit 0; fi; touch {flag}; exit 1"],
                             name="flaky", retries=1, **where)
        batch.submit(["sh", "-c", f"{mark} grep -q {tag} {{inputs.m}}/made"], name="use", inputs={"m": make.output},
                     **where)
        batch.submit(["sh", "-c", f"{mark} true {tag}"], name="after", when=make.succeeded & ~flaky.failed, **where)
        broken = batch.submit(["sh", "-c", f"{mark} exit 3 # {tag}"], name="broken", **where)
        batch.submit(["sh", "-c", f"{mark} true never {tag}"], name="never", when=broken.succeeded, **where)
        return batch.specs

    def submit_until(self, address: Any, stop: threading.Event) -> None:
        """Submit rounds until `stop`; a round's request is sent again until it is answered."""
        while not stop.is_set():
            tag, request_id = uuid.uuid4().hex[:12], uuid.uuid4().hex
            while True:
                if not address():  # a standby taking over: not serving yet
                    stop.wait(0.2)
                    continue
                try:
                    client = jobnest.Client(address(), TOKEN, driver=False)
                    jobs = client.submit_many(self.specs(client, tag), request_id=request_id)
                    self.rounds.append([j.uuid for j in jobs])
                    self.sent += 1
                    break
                except jobnest.JobnestError:
                    if stop.wait(0.2):
                        return
            stop.wait(random.uniform(0.1, 0.6))


def soak(executor: str, kills: int, store: str = "", failovers: bool = False) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"jobnest-soak-{executor}-", dir="/tmp"))
    mounts = base / "mounts"
    mounts.mkdir()
    docker = executor == "docker"
    workflow = Workflow(mounts, docker, mounts)
    controllers = [Controller(base / name, store, docker, mounts) for name in (("a", "b") if failovers else ("a",))]
    active = controllers[0]
    active.spawn()
    active.serving()
    for standby in controllers[1:]:
        standby.spawn()  # waits for the lease
    stop = threading.Event()
    submitter = threading.Thread(target=workflow.submit_until, args=(lambda: active.address, stop), daemon=True)
    started = time.monotonic()
    submitter.start()
    takeovers = []
    try:
        for _ in range(kills):
            time.sleep(random.uniform(0.2, 1.5))
            killed = active
            killed.kill()
            if failovers:  # the standby takes over; the killed one comes back as the standby
                active = controllers[1 - controllers.index(killed)]
                t = time.monotonic()
                active.serving()
                takeovers.append(time.monotonic() - t)
                killed.spawn()
            else:
                killed.spawn()
                killed.serving()
        stop.set()
        submitter.join(timeout=30)
        if not workflow.rounds:
            raise RuntimeError(f"no round was submitted; see the controllers' logs in {base}")
        return {**verify(workflow, active.address), "executor": executor + (" (2 controllers, PostgreSQL)"
                                                                                  if failovers else ""),
                "kills": kills, "seconds": round(time.monotonic() - started),
                "takeover": f"{max(takeovers):.1f} s" if takeovers else "-"}
    finally:
        stop.set()
        for controller in controllers:
            controller.kill()
        if docker:
            for controller in controllers:
                subprocess.run(f"docker ps -aq --filter label=jobnest.controller={controller.home} | xargs -r docker rm -f",
                               shell=True, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def verify(workflow: Workflow, address: str) -> dict[str, Any]:
    client = jobnest.Client(address, TOKEN, driver=False)
    every = [u for round_ in workflow.rounds for u in round_]
    deadline = time.monotonic() + 300
    states: dict[str, Any] = {}
    while time.monotonic() < deadline:
        states = {}
        for u in every:
            try:
                states[u] = client.get(u)
            except jobnest.NotFound:
                pass
        if all(info.state in ("succeeded", "failed", "cancelled") for info in states.values()):
            break
        time.sleep(1)
    lost = len(every) - len(states)
    stuck = sum(info.state not in ("succeeded", "failed", "cancelled") for info in states.values())
    wrong = sum(states[u].state != EXPECTED[name]
                for round_ in workflow.rounds for u, name in zip(round_, EXPECTED) if u in states)
    lines = (workflow.ledger / "ledger").read_text().split("\n") if (workflow.ledger / "ledger").exists() else []
    attempts: dict[tuple[str, str], int] = {}
    for line in filter(None, lines):
        run, job = line.split()
        attempts[(run, job)] = attempts.get((run, job), 0) + 1
    # flaky runs twice by design (its retry); anything else recorded twice ran twice
    flaky = {states[r[1]].run_uuid for r in workflow.rounds if r[1] in states}
    twice = 0
    for (run, job), n in attempts.items():
        if n > (2 if run in flaky else 1):
            twice += n - (2 if run in flaky else 1)
            info = states.get(job)
            print(f"ran {n} times: run {run} of job {job} ({info.name if info else '?'}, "
                  f"{info.state if info else '?'}, {info.reason if info else ''})", file=sys.stderr)
    return {"rounds": workflow.sent, "jobs": len(every), "lost": lost, "ran twice": twice, "stuck": stuck,
            "wrong end": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--only", choices=["local", "docker", "failover"], help="run one section alone")
    args = parser.parse_args()
    results = [soak(executor, args.kills) for executor in ("local", "docker") if args.only in (None, executor)]
    if args.only in (None, "failover"):
        with postgres.cluster() as url:
            results.append(soak("local", args.failovers, postgres.new_database(url, "soak"), failovers=True))
    columns = ["executor", "kills", "rounds", "jobs", "lost", "ran twice", "stuck", "wrong end", "takeover", "seconds"]
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in results]
    print("\n".join(table))
    with open(Path(__file__).resolve().parent.parent / "docs" / "bench.md", "a") as f:
        f.write(f"\n## Soak ({time.strftime('%Y-%m-%d')})\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
