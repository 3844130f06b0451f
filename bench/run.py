"""`make bench`: measure the controller against its scale targets and print a table.

Every number comes from a real controller subprocess (`python -m jobnest_controller`) on a temp
home under /tmp, reached over gRPC on 127.0.0.1 by the public SDK, so client and server do not
share a GIL and the controller's RSS is its own. Three controllers are used in turn:

* submit: node capacity 0.001 cores, taken by one `sleep` blocker job, so every job submitted
  afterwards stays queued and nothing else is ever spawned. Measures single submits (1 and 4
  client threads), batch submits (1000 per call), reuse lookups (`Store.find_reusable`, on the
  controller's own SQLite file) and a batch submit in which every job reuses a queued run.
* local: default capacity; 500 unique `true` jobs (cpu 0.01) submitted in batches, timed until
  the last has ended.
* tree: a driver job (this program) is the tree's root; one `true` child runs and succeeds, then
  100k children with the same argv are submitted, all reusing that run (so none is queued and the
  reconciler stays idle). Times listing the subtree over gRPC and reads the controller's VmRSS.

It also times the exec-redirection shim's cost on execs it does not redirect (no controller).

`--quick` divides every count by 10 for a smoke test. The table is also written to docs/bench.md.
"""

import argparse
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

import jobnest
from jobnest_controller.store import Store, runs

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789"
BATCH = 1000


class ControllerProc:
    """A controller subprocess on a temp home; `stop()` also ends any run process it left behind."""

    def __init__(self, cpu: float | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="jobnest-bench-", dir="/tmp"))
        args = [sys.executable, "-m", "jobnest_controller", "--home", str(self.home),
                "--listen", "127.0.0.1:0", "--admin-token", TOKEN]
        if cpu is not None:
            args += ["--cpu", str(cpu)]
        self.log = open(self.home / "controller.log", "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        if not line.startswith("port "):
            self.proc.wait(10)
            tail = (self.home / "controller.log").read_text(errors="replace")[-400:]
            self.stop()
            raise RuntimeError(f"controller did not start: {tail}")
        self.address = f"127.0.0.1:{line.split()[1]}"
        self.url = f"sqlite:///{self.home / 'jobnest.db'}"

    def client(self, driver: bool = False) -> jobnest.Client:
        return jobnest.Client(self.address, TOKEN, driver=driver)

    def rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the controller process in MiB."""
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024

    def _children(self) -> dict[int, str]:
        """pid -> start time of the controller's child processes (the runs it started)."""
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.proc.pid:
                found[int(stat.parent.name)] = fields[19]
        return found

    def stop(self) -> None:
        # Runs outlive their controller by design; end the ones this benchmark made it start.
        children = self._children() if self.proc.poll() is None else {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        for pid, start in children.items():
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start:
                    os.killpg(pid, signal.SIGKILL)  # each run leads its own session
            except (OSError, IndexError):
                pass
        shutil.rmtree(self.home, ignore_errors=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_state(client: jobnest.Client, uuid: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (now := client.get(uuid).state) != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {uuid} is {now}, expected {state}")
        time.sleep(0.05)


def bench_submit(n_single: int, n_batch: int, n_lookup: int, rows: list, notes: list) -> None:
    ctl = ControllerProc(cpu=0.001)
    try:
        client = ctl.client()
        blocker = client.submit(["sleep", "3600"], cpu=0.001, reuse=False, name="blocker")
        wait_state(client, blocker.uuid, "running")

        def single(prefix: str, count: int) -> None:
            for i in range(count):
                client.submit(["true", f"{prefix}-{i}"], cpu=0.001)

        dt = timed(lambda: single("s1", n_single))
        rows.append(("single-job submits/s (1 client thread)", n_single / dt, ">= 1000/s", n_single / dt >= 1000))
        threads = [threading.Thread(target=single, args=(f"s4-{t}", n_single // 4)) for t in range(4)]
        dt = timed(lambda: ([t.start() for t in threads], [t.join() for t in threads]))
        n4 = n_single // 4 * 4
        rows.append(("single-job submits/s (4 client threads)", n4 / dt, ">= 1000/s", n4 / dt >= 1000))

        specs = [client.spec(["true", f"b-{i}"], cpu=0.001) for i in range(n_batch)]
        dt = timed(lambda: [client.submit_many(specs[i:i + BATCH]) for i in range(0, n_batch, BATCH)])
        rows.append((f"batch-submit jobs/s ({BATCH} per call)", n_batch / dt, ">= 20000/s", n_batch / dt >= 20000))

        store = Store(ctl.url)
        with store.read() as conn:
            sigs = list(conn.execute(sa.select(runs.c.signature).where(runs.c.state == "queued")
                                     .limit(n_lookup)).scalars())
        best = min(timed(lambda: store.find_reusable(sigs)) for _ in range(3))
        assert len(store.find_reusable(sigs)) == len(sigs)
        store.close()
        rows.append((f"reuse lookups/s (find_reusable, {len(sigs)} sigs)", len(sigs) / best, ">= 100000/s",
                     len(sigs) / best >= 100000))

        again = specs[:n_lookup]  # same argv as jobs already queued: every one reuses a run
        jobs: list = []
        dt = timed(lambda: [jobs.extend(client.submit_many(again[i:i + BATCH])) for i in range(0, len(again), BATCH)])
        assert all(j.reused for j in jobs)
        rows.append((f"batch-submit jobs/s, all reused ({BATCH} per call)", len(again) / dt, "(info)", None))
        notes.append(f"Submit metrics: controller with `--cpu 0.001`, one `sleep` job holding it, so the "
                     f"{n_single + n4 + n_batch} submitted jobs stay queued (none runs). Each single submit "
                     f"is one `Submit` call with one job; the 4-thread row shares one channel.")
    finally:
        ctl.stop()


def bench_local(n: int, rows: list, notes: list) -> None:
    ctl = ControllerProc()
    try:
        client = ctl.client()
        uuids: list[str] = []

        def run() -> None:
            for i in range(0, n, 100):
                specs = [client.spec(["true"], cpu=0.01, reuse=False) for _ in range(min(100, n - i))]
                uuids.extend(j.uuid for j in client.submit_many(specs))
            client.wait(uuids)

        dt = timed(run)
        failed = [i for i in client.list() if i.state != "succeeded"]
        assert not failed, failed[:3]
        rows.append((f"local `true` jobs/s end to end ({n} jobs)", n / dt, ">= 200/s", n / dt >= 200))
        notes.append(f"Local jobs: {n} `[\"true\"]` jobs, cpu 0.01, reuse off, submitted 100 per call; "
                     f"timed from the first submit until `client.wait()` saw the last one end.")
    finally:
        ctl.stop()


def bench_tree(n: int, rows: list, notes: list) -> None:
    ctl = ControllerProc(cpu=1)
    try:
        driver = ctl.client(driver=True)
        first = driver.submit(["true"], cpu=0.01).wait(timeout=60)
        assert first.state == "succeeded"
        specs = [driver.spec(["true"], cpu=0.01) for _ in range(BATCH)]
        dt = timed(lambda: [driver.submit_many(specs[:min(BATCH, n - 1 - i)]) for i in range(0, n - 1, BATCH)])
        root = driver.driver.uuid  # type: ignore[union-attr]
        admin = ctl.client()
        listed: list = []
        dt_list = timed(lambda: listed.extend(admin.list(subtree=root)))
        assert len(listed) == n + 1, len(listed)  # the driver itself and its n children
        rss, peak = ctl.rss_mb()
        rows.append((f"list a {n}-job tree over gRPC (s)", dt_list, "<= 1 s", dt_list <= 1))
        rows.append((f"controller RSS with {n} jobs stored (MiB)", rss, "<= 200 MB", rss <= 200))
        notes.append(f"Tree: {n} children of one driver job, submitted {BATCH} per call at {(n - 1) / dt:,.0f} "
                     f"jobs/s; all but the first reuse its succeeded run. RSS read from /proc after the "
                     f"listing; peak RSS (VmHWM) was {peak:.0f} MiB.")
        driver.finish()
    finally:
        ctl.stop()


def bench_docker(n: int, rows: list, notes: list) -> None:
    """Controller overhead per container job: n jobs one after another, against `docker run`."""
    image = "jobnest/busybox:latest"
    ctl = ControllerProc()
    try:
        client = ctl.client()
        client.submit(["true"], executor="docker", image=image, reuse=False).wait(timeout=60)  # warm up

        def through_jobnest() -> None:
            for _ in range(n):
                job = client.submit(["true"], executor="docker", image=image, cpu=1, reuse=False).wait(timeout=60)
                assert job.state == "succeeded", job.info.reason

        def plain() -> None:
            for _ in range(n):
                subprocess.run(["docker", "run", "--rm", "--init", "--cpus", "1", image, "true"], check=True,
                               capture_output=True)

        ours, theirs = timed(through_jobnest), timed(plain)
        rows.append((f"container job vs plain `docker run` ({n} in turn), ratio", ours / theirs, "<= 1.1x",
                     ours / theirs <= 1.1))
        notes.append(f"Docker: {n} `true` jobs in jobnest/busybox one after another, submit to end seen by "
                     f"`wait()`: {ours / n * 1000:.0f} ms each; `docker run --rm --init` of the same: "
                     f"{theirs / n * 1000:.0f} ms each.")
    finally:
        ctl.stop()


def bench_workflows(n: int, rows: list, notes: list) -> None:
    """A chain of n jobs (each waits on the one before) and a fan-out of n with one fan-in job, each
    run once and then again fully reused, against the same commands through `xargs -P 2`."""
    ctl = ControllerProc()
    try:
        client = ctl.client()

        def chain(tag: str) -> None:
            previous = None
            for i in range(n):
                options = {"when": previous.succeeded} if previous else {}
                previous = client.submit(["true", f"{tag}-{i}"], cpu=1, **options)  # one at a time: no cap
            assert previous is not None and previous.wait(timeout=600).state == "succeeded"

        def fan(tag: str) -> None:
            jobs = client.submit_many([client.spec(["true", f"{tag}-{i}"], cpu=0.01) for i in range(n)])
            everything = jobs[0].succeeded
            for job in jobs[1:]:
                everything = everything & job.succeeded
            assert client.submit(["true", f"{tag}-in"], cpu=0.01, when=everything).wait(timeout=600).state == "succeeded"

        floor = timed(lambda: subprocess.run(f"seq {n} | xargs -P 2 -n 1 true", shell=True, check=True))
        for name, fn in (("chain", chain), ("fan-out/fan-in", fan)):
            first, again = timed(lambda: fn(name)), timed(lambda: fn(name))
            rows.append((f"{n}-job {name}, first run (s)", first, f"xargs -P 2: {floor:.2f} s", None))
            rows.append((f"{n}-job {name}, reused rerun (s)", again, "", None))
            notes.append(f"{n}-job {name}: first run {first / floor:.1f}x and reused rerun {again / floor:.1f}x "
                         f"the time of `xargs -P 2` running the same {n} commands ({floor:.2f} s).")
    finally:
        ctl.stop()


def bench_shim(n: int, rows: list, notes: list) -> None:
    """n execs of /bin/true from a bash loop: plain, with an empty library preloaded (the floor:
    what loading any library costs) and with the shim preloaded (a whitelist in force that does
    not name `true`); best of 7 alternating rounds each."""
    shim = ROOT / "build" / "shim" / "libjobnest_exec.so"
    empty = Path(tempfile.mkdtemp(prefix="jobnest-bench-")) / "libempty.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-s", "-nostartfiles", "-o", str(empty), "-x", "c", "-"],
                   input=b"void jobnest_bench_empty(void) {}\n", check=True)
    loop = ["bash", "-c", f"for i in $(seq {n}); do /bin/true; done"]
    envs = {"plain": dict(os.environ), "empty": {**os.environ, "LD_PRELOAD": str(empty)},
            "shim": {**os.environ, "LD_PRELOAD": str(shim), "JOBNEST_EXEC_REDIRECT": "wc,bwa"}}
    best = dict.fromkeys(envs, float("inf"))
    for _ in range(7):
        for name, env in envs.items():
            best[name] = min(best[name], timed(lambda: subprocess.run(loop, env=env, check=True)))
    shutil.rmtree(empty.parent)
    overhead = (best["shim"] / best["plain"] - 1) * 100
    rows.append((f"shim overhead on a non-redirected exec ({n} x /bin/true), %", overhead, "< 5%", overhead < 5))
    per = {name: t / n * 1e6 for name, t in best.items()}
    notes.append(f"Shim: an exec of /bin/true from bash took {per['plain']:.0f} µs plain, {per['empty']:.0f} µs with "
                 f"an empty library preloaded and {per['shim']:.0f} µs with the shim (best of 7 rounds of {n}): "
                 f"loading any library costs {(best['empty'] / best['plain'] - 1) * 100:.1f}% here, the shim "
                 f"{(best['shim'] / best['empty'] - 1) * 100:.1f}% more.")


def render(rows: list, markdown: bool) -> str:
    def fmt(v: float) -> str:
        return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"

    table = [("metric", "measured", "target", "met?")]
    table += [(m, fmt(v), t, "-" if ok is None else ("yes" if ok else "NO")) for m, v, t, ok in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in table]
        lines.insert(1, "|---|--:|---|---|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = ["  ".join(c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="divide every count by 10 (smoke test)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench.md"), help="markdown report path")
    args = parser.parse_args()
    k = 10 if args.quick else 1
    rows: list = []
    notes: list = []
    started = time.monotonic()
    failed = False
    for section, fn in [("submit", lambda: bench_submit(2000 // k, 20000 // k, 10000 // k, rows, notes)),
                        ("local", lambda: bench_local(500 // k, rows, notes)),
                        ("tree", lambda: bench_tree(100000 // k, rows, notes)),
                        ("docker", lambda: bench_docker(max(3, 30 // k), rows, notes)),
                        ("workflows", lambda: bench_workflows(1000 // k, rows, notes)),
                        ("shim", lambda: bench_shim(1000 // k, rows, notes))]:
        try:
            fn()
        except Exception as e:  # report the other sections still
            traceback.print_exc()
            notes.append(f"The {section} section FAILED: {e.__class__.__name__}: {str(e)[:300]}")
            failed = True
    print(render(rows, markdown=False))
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = f"{platform.node()}, {os.cpu_count()} cores (nproc), {platform.python_implementation()} " \
              f"{platform.python_version()}, SQLite store"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# jobnest benchmark{' (--quick)' if args.quick else ''}\n\n"
                   f"{when} on {machine}; `make bench` (bench/run.py), {time.monotonic() - started:.0f} s.\n\n"
                   f"{render(rows, markdown=True)}\n\n" + "".join(f"- {n}\n" for n in notes))
    print("".join(f"\n- {n}" for n in notes))
    print(f"\nwritten to {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
