"""`make bench`: measure the controller against its scale targets and print a table.

Every number comes from a real controller subprocess (`python -m jobnest_controller`) on a temp
home under /tmp, reached over gRPC on 127.0.0.1 by the public SDK, so client and server do not
share a GIL and the controller's RSS is its own. Each section has a controller of its own:

* submit: node capacity 0.001 cores, taken by one `sleep` blocker job, so every job submitted
  afterwards stays queued and nothing else is ever spawned. Measures single submits (1 and 4
  client threads), batch submits (1000 per call), reuse lookups (`Store.find_reusable`, on the
  controller's own SQLite file) and a batch submit in which every job reuses a queued run; and,
  for scale, what SQLite alone takes to insert the rows of a batch submit (a copy of the store).
* queued: the same blocked node; 100k unique jobs submitted 1000 per call stay queued, then the
  controller's VmRSS is read.
* cancel: the same blocked node; a driver job (this program) with 10k queued children; times
  `cancel` of the driver's subtree until all of it has ended, while another thread submits
  single jobs in a loop, and reports the longest of those submits during the cancel.
* local: default capacity; 500 unique `true` jobs (cpu 0.01) submitted in batches, timed until
  the last has ended.
* output: default capacity; one job writes 100k small files of distinct content; the controller's
  peak RSS while it stores them, over its RSS before.
* tree: a driver job (this program) is the tree's root; one `true` child runs and succeeds, then
  100k children with the same argv are submitted, all reusing that run (so none is queued and the
  reconciler stays idle). Times listing the subtree over gRPC and reads the controller's VmRSS.
* web: `jobnest web` in Debian's Chromium (Playwright): the time from loading the tree page to
  the root's row with its roll-up counts drawn, for a driver with 10k children the monitor has
  not listed yet; and the controller's CPU time while a driver's 1000 `true` jobs run, with no
  browser and with 10 browsers on the driver's job page (each shown to see the end, live).
* docker (run last: the engine goes on removing containers for a while): container jobs one
  after another against plain `docker run`.
* workflows: default capacity; a 1000-job `when=` chain and a 1000-job fan-out/fan-in, each run
  once and then again fully reused.
* map + gather: a fresh controller of default capacity (2 cores) for each size; the program a new
  user writes, default resources: `client.map` of N `sh -c 'echo {item} > {output}/n.txt'` jobs,
  then one gather job with every map job's output as an input, timed from the first submit until
  `wait` sees the gather end; for N = 1000 and 10,000, first run and fully reused rerun, against
  `xargs -P 2` running the same N shell commands. A run that overruns its budget (600 s) is
  recorded as such and cancelled.

* snakemake: a fresh controller of default capacity; a Snakefile of 1000 one-line shell rule
  instances and a gather, run by `snakemake --executor jobnest -j 100` and by Snakemake's own
  local executor with `--cores 2`, each once.

It also times the exec-redirection shim's cost on execs it does not redirect (no controller),
and on a one-node Slurm cluster (tests/slurm.py) 200 `true` jobs of one core through jobnest
against `sbatch --array` of the same, and 200 of a quarter core (which go to blocks).

The short timings (single submits, the first runs of the chain, of the fan-out/fan-in and of the
1000-job map + gather, and their `xargs` floors) are the best of 3 rounds, each of new jobs and
each after `sync` (the disk writing back earlier sections' files slows every file operation): on
this machine the same run varies by about 30 % from one try to the next.

`--quick` divides every count (and the map + gather budget) by 10 for a smoke test. The table is
also written to docs/bench.md.
"""

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa

import jobnest
from jobnest.web.app import PAGE
from jobnest_controller.store import Store, runs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import slurm, test_web  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789"
BATCH = 1000
ENDED = ("succeeded", "failed", "cancelled")
MAP_ARGV = ["sh", "-c", "echo {item} > {output}/n.txt"]  # the map + gather workload's map


class ControllerProc:
    """A controller subprocess on a temp home; `stop()` also ends any run process it left behind."""

    def __init__(self, cpu: float | None = None, flags: tuple[str, ...] = ()) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="jobnest-bench-", dir="/tmp"))
        args = [sys.executable, "-m", "jobnest_controller", "--home", str(self.home),
                "--listen", "127.0.0.1:0", *flags]
        if cpu is not None:
            args += ["--cpu", str(cpu)]
        self.log = open(self.home / "controller.log", "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "JOBNEST_ADMIN_TOKEN": TOKEN})
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


ROUNDS = 3  # the short timings are the best of this many rounds: this machine's noise is +-30 %


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(fn: Callable[[int], object], rounds: int = ROUNDS) -> float:
    """The shortest of `rounds` timings of fn(round), each after the files written before it are
    flushed (the disk writing them back slows every file operation meanwhile)."""
    times = []
    for r in range(rounds):
        os.sync()
        times.append(timed(lambda: fn(r)))
    return min(times)


def wait_state(client: jobnest.Client, uuid: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (now := client.get(uuid).state) != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {uuid} is {now}, expected {state}")
        time.sleep(0.05)


def blocked_controller() -> tuple[ControllerProc, jobnest.Client]:
    """A controller whose one node (0.001 cores) a `sleep` job holds, so that every job submitted
    afterwards stays queued and nothing else is spawned; and an admin client of it."""
    ctl = ControllerProc(cpu=0.001)
    try:
        client = ctl.client()
        blocker = client.submit(["sleep", "3600"], cpu=0.001, reuse=False, name="blocker")
        wait_state(client, blocker.uuid, "running")
    except BaseException:
        ctl.stop()
        raise
    return ctl, client


def submit_unique(client: jobnest.Client, prefix: str, n: int) -> None:
    """n jobs that stay queued on a blocked controller, `BATCH` per call, each with its own argv."""
    for i in range(0, n, BATCH):
        client.submit_many([client.spec(["true", f"{prefix}-{j}"], cpu=0.001) for j in range(i, min(n, i + BATCH))])


def bench_submit(n_single: int, n_batch: int, n_lookup: int, rows: list, notes: list) -> None:
    ctl, client = blocked_controller()
    try:
        def single(prefix: str, count: int) -> None:
            for i in range(count):
                client.submit(["true", f"{prefix}-{i}"], cpu=0.001)

        dt = best(lambda r: single(f"s1-{r}", n_single))
        rows.append(("single-job submits/s (1 client thread)", n_single / dt, ">= 1000/s", n_single / dt >= 1000))

        def four(r: int) -> None:
            threads = [threading.Thread(target=single, args=(f"s4-{r}-{t}", n_single // 4)) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        dt = best(four)
        n4 = n_single // 4 * 4
        rows.append(("single-job submits/s (4 client threads)", n4 / dt, ">= 2000/s", n4 / dt >= 2000))

        specs = [client.spec(["true", f"b-{i}"], cpu=0.001) for i in range(n_batch)]
        dt = timed(lambda: [client.submit_many(specs[i:i + BATCH]) for i in range(0, n_batch, BATCH)])
        rows.append((f"batch-submit jobs/s ({BATCH} per call)", n_batch / dt, ">= 50000/s", n_batch / dt >= 50000))
        floor = sqlite_floor(ctl.home / "jobnest.db")
        rows.append((f"the same rows inserted by SQLite alone, jobs/s ({BATCH} per transaction)", floor, "(info)", None))

        store = Store(ctl.url)
        with store.read() as conn:
            sigs = list(conn.execute(sa.select(runs.c.signature).where(runs.c.state == "queued")
                                     .limit(n_lookup)).scalars())
        fastest = min(timed(lambda: store.find_reusable(sigs)) for _ in range(3))
        assert len(store.find_reusable(sigs)) == len(sigs)
        store.close()
        rows.append((f"reuse lookups/s (find_reusable, {len(sigs)} sigs)", len(sigs) / fastest, ">= 100000/s",
                     len(sigs) / fastest >= 100000))

        again = specs[:n_lookup]  # same argv as jobs already queued: every one reuses a run
        jobs: list = []
        dt = timed(lambda: [jobs.extend(client.submit_many(again[i:i + BATCH])) for i in range(0, len(again), BATCH)])
        assert all(j.reused for j in jobs)
        rows.append((f"batch-submit jobs/s, all reused ({BATCH} per call)", len(again) / dt, "(info)", None))
        notes.append(f"Submit metrics: controller with `--cpu 0.001`, one `sleep` job holding it, so the "
                     f"{ROUNDS * (n_single + n4) + n_batch} submitted jobs stay queued (none runs). The single "
                     f"submit rows are the best of {ROUNDS} rounds of {n_single}; each is one `submit()`, and "
                     f"the 4 threads share one client (whose concurrent submits share requests).")
    finally:
        ctl.stop()


def sqlite_floor(db: Path, rounds: int = 10) -> float:
    """Jobs/s at which SQLite alone stores what a batch submit stores (a run row and a job row a
    job, with fresh uuids, signatures and paths), in a copy of the controller's store."""
    copy = Path(tempfile.mkdtemp(prefix="jobnest-bench-", dir="/tmp")) / "copy.db"
    try:
        with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        conn = sqlite3.connect(copy)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        inserts, rows = {}, {}
        for table in ("runs", "jobs"):
            cursor = conn.execute(f"SELECT * FROM {table} LIMIT 1")
            names = [d[0] for d in cursor.description if d[0] != "seq"]
            row = dict(zip([d[0] for d in cursor.description], cursor.fetchone()))
            inserts[table] = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            rows[table] = (names, row)
        spent = 0.0
        for _ in range(rounds):
            batches = {}
            for table, (names, row) in rows.items():
                fresh = [{**row, "uuid": os.urandom(16).hex(), "signature": os.urandom(32).hex(),
                          "path": f"/{os.urandom(16).hex()}/", "run_uuid": os.urandom(16).hex()} for _ in range(BATCH)]
                batches[table] = [tuple(r[n] for n in names) for r in fresh]
            start = time.perf_counter()
            for table, batch in batches.items():
                conn.executemany(inserts[table], batch)
            conn.commit()
            spent += time.perf_counter() - start
        conn.close()
        return rounds * BATCH / spent
    finally:
        shutil.rmtree(copy.parent)


def bench_queued(n: int, rows: list, notes: list) -> None:
    ctl, client = blocked_controller()
    try:
        dt = timed(lambda: submit_unique(client, "q", n))
        queued = client.status()["runs"].get("queued", 0)
        assert queued == n, queued
        time.sleep(1)  # the reconciler has seen the new runs
        rss, peak = ctl.rss_mb()
        rows.append((f"controller RSS with {n} jobs queued (MiB)", rss, "<= 300 MB", rss <= 300))
        notes.append(f"Queued: {n} unique jobs submitted {BATCH} per call ({n / dt:,.0f} jobs/s) to a node a "
                     f"`sleep` job holds, so all stay queued; RSS read from /proc 1 s after the last submit; "
                     f"peak RSS (VmHWM) was {peak:.0f} MiB.")
    finally:
        ctl.stop()


def submit_loop(client: jobnest.Client, spans: list, stop: threading.Event) -> None:
    """Single submits one after another until `stop`; the (start, end) of each goes in `spans`."""
    i = 0
    while not stop.is_set():
        start = time.perf_counter()
        client.submit(["true", f"meanwhile-{i}"], cpu=0.001)
        spans.append((start, time.perf_counter()))
        i += 1


def cancel_subtree(client: jobnest.Client, root: str) -> tuple[float, float, float, int]:
    """Cancel root's subtree: (start, when the call returned, when all of it had ended, jobs
    cancelled). All had ended when the call returned unless a listing after it found live jobs."""
    start = time.perf_counter()
    cancelled = client.cancel(root)
    returned = ended = time.perf_counter()
    while live := sum(i.state not in ENDED for i in client.list(subtree=root)):
        if time.perf_counter() - start > 60:
            raise RuntimeError(f"{live} jobs still live 60 s after cancelling their subtree")
        time.sleep(0.05)
        ended = time.perf_counter()
    return start, returned, ended, len(cancelled)


def bench_cancel(n: int, rows: list, notes: list) -> None:
    ctl, admin = blocked_controller()
    try:
        driver = ctl.client(driver=True)
        submit_unique(driver, "c", n)  # children of the driver job, so its subtree
        root = driver.driver.uuid  # type: ignore[union-attr]
        spans: list[tuple[float, float]] = []
        stop = threading.Event()
        thread = threading.Thread(target=submit_loop, args=(ctl.client(), spans, stop))
        thread.start()
        try:
            while len(spans) < 50 and thread.is_alive():  # the loop is under way before the cancel
                time.sleep(0.01)
            start, returned, ended, cancelled = cancel_subtree(admin, root)
        finally:
            stop.set()
            thread.join()
        assert cancelled >= n, cancelled
        during = [b - a for a, b in spans if b > start and a < ended]
        assert during, "no submit overlapped the cancel: did the submitting thread fail?"
        before = sorted(b - a for a, b in spans if b <= start)
        worst = max(during, default=0.0) * 1000
        rows.append((f"cancel a {n}-job queued subtree (s)", ended - start, "<= 1 s", ended - start <= 1))
        rows.append(("longest single submit during that cancel (ms)", worst, "<= 100 ms", worst <= 100))
        settled = "all had ended by then" if ended == returned else f"all had ended {ended - start:.2f} s after it"
        notes.append(f"Cancel: {n} queued children of a driver job on a node a `sleep` job holds; `cancel` of the "
                     f"driver returned {returned - start:.2f} s after the call with {cancelled} jobs cancelled, "
                     f"{settled}. Meanwhile another thread (own channel) submitted single jobs in a loop: "
                     f"{len(during)} overlapped the cancel, the longest took {worst:.0f} ms (median before the "
                     f"cancel: {before[len(before) // 2] * 1000:.1f} ms).")
        with contextlib.suppress(jobnest.JobnestError):
            driver.finish()
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


WRITE_FILES = ("import os, sys\nout, n = sys.argv[1], int(sys.argv[2])\nfor d in range(n // 1000):\n"
               "    os.mkdir(f'{out}/d{d}')\n    for i in range(1000):\n"
               "        with open(f'{out}/d{d}/f{i}', 'w') as f: f.write(f'{d} {i}')\n")


def bench_output(n: int, rows: list, notes: list) -> None:
    """One job writes n small files of distinct content; what storing them costs the controller."""
    ctl = ControllerProc()
    try:
        client = ctl.client()
        client.submit(["true"]).wait(timeout=60)  # the controller warmed up
        _, before = ctl.rss_mb()
        job = client.submit([sys.executable, "-c", WRITE_FILES, "{output}", str(n)], reuse=False)
        wait_state(client, job.uuid, "running", timeout=60)
        started = time.monotonic()
        done = job.wait(timeout=600)
        assert done.state == "succeeded", done.info.reason
        seconds = time.monotonic() - started
        _, peak = ctl.rss_mb()
        rows.append((f"controller peak RSS storing a {n}-file output, MiB over its start", peak - before,
                     "(info)", None))
        notes.append(f"Output: one job writes {n} files of distinct content (about 10 bytes each) in 1000-file "
                     f"folders; the controller's peak RSS (VmHWM) rose from {before:.0f} to {peak:.0f} MiB while "
                     f"it stored them (each a blob, and the output folder made a link to its tree); the job ran "
                     f"and was stored in {seconds:.1f} s.")
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_web(n_tree: int, n_run: int, n_browsers: int, rows: list, notes: list) -> None:
    """The web monitor in Debian's Chromium: the first paint of an n_tree-job tree, and the
    controller's CPU while n_browsers watch an n_run-job workflow run, against none watching."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=test_web.CHROMIUM, args=test_web.ARGS)
        ctl, web = ControllerProc(cpu=1), None
        try:
            driver = ctl.client(driver=True)
            driver.submit(["true"], cpu=0.01).wait(timeout=60)
            for i in range(0, n_tree - 1, BATCH):  # all reuse the first one's run
                driver.submit_many([driver.spec(["true"], cpu=0.01) for _ in range(min(BATCH, n_tree - 1 - i))])
            root = driver.driver.uuid  # type: ignore[union-attr]
            web = test_web.Web(ctl, TOKEN)
            page = browser.new_page()
            paint = timed(lambda: (page.goto(web.url), page.locator(f'li[data-uuid="{root}"] .count').wait_for()))
            expand = timed(lambda: (page.click(f'li[data-uuid="{root}"] button.toggle'),
                                    page.locator("ul.children > li.job").nth(99).wait_for()))
            warm = timed(lambda: (page.reload(), page.locator(f'li[data-uuid="{root}"] .count').wait_for()))
            rows.append((f"web: first paint of a {n_tree}-job tree, cold (s)", paint, "<= 1 s", paint <= 1))
            rows.append((f"web: open its root, first {PAGE} children drawn (s)", expand, "(info)", None))
            rows.append(("web: first paint of that tree again, kept live by the monitor (s)", warm, "(info)", None))
            notes.append(f"Web: a driver with {n_tree - 1} children (all reusing one run), its tree page loaded in "
                         "headless Chromium from a `jobnest web` that had not listed it yet (cold: the monitor lists "
                         "the tree for its roll-up counts), until the root's row with its counts is drawn.")
            driver.finish()
        finally:
            if web:
                web.stop()
            ctl.stop()
        spent = {}
        for watchers in (0, n_browsers):
            ctl = ControllerProc()
            web = test_web.Web(ctl, TOKEN)
            contexts = []
            try:
                driver = ctl.client(driver=True)
                driver.submit(["true", "start"], cpu=0.01).wait(timeout=60)
                top = driver.driver.uuid  # type: ignore[union-attr]
                pages = []
                for _ in range(watchers):
                    contexts.append(browser.new_context())
                    pages.append(contexts[-1].new_page())
                    pages[-1].goto(f"{web.url}/job/{top}")
                    pages[-1].locator(".children li.job").nth(1).wait_for()
                before, web_before = cpu_seconds(ctl.proc.pid), cpu_seconds(web.process.pid)
                start = time.perf_counter()
                jobs = driver.submit_many([driver.spec(["true", str(i)], cpu=0.01) for i in range(n_run)])
                driver.wait([j.uuid for j in jobs], timeout=600)
                for pg in pages:  # every browser saw the end, live
                    pg.locator(f'li[data-uuid="{top}"] .count.s-succeeded').filter(has_text=str(n_run + 1)).wait_for(
                        timeout=60_000)
                spent[watchers] = (cpu_seconds(ctl.proc.pid) - before, time.perf_counter() - start,
                                   cpu_seconds(web.process.pid) - web_before)
                driver.finish()
            finally:
                for c in contexts:
                    c.close()
                web.stop()
                ctl.stop()
        browser.close()
    (alone, alone_wall, _), (watched, watched_wall, web_cpu) = spent[0], spent[n_browsers]
    rows.append((f"web: controller CPU running {n_run} jobs, no browser (s)", alone, "(info)", None))
    rows.append((f"web: the same with {n_browsers} browsers watching live (s)", watched, "(info)", None))
    rows.append((f"web: the monitor's own CPU serving those {n_browsers} browsers (s)", web_cpu, "(info)", None))
    notes.append(f"Web fan-out: {n_run} `true` jobs of one driver run on a fresh controller, first with no browser "
                 f"({alone_wall:.1f} s), then with {n_browsers} Chromium pages of the driver's job page open "
                 f"({watched_wall:.1f} s), each shown to have seen the end live. The monitor keeps one Watch per "
                 "token, so the controller's work does not grow with the browsers; the fan-out is the monitor's.")


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


def bench_slurm(n: int, rows: list, notes: list) -> None:
    """n whole-core `true` jobs through jobnest on a one-node Slurm cluster, against `sbatch
    --array` of the same straight to Slurm; and n quarter-core ones, which go to blocks."""
    with slurm.cluster() as conf:
        env = {**os.environ, "SLURM_CONF": str(conf)}

        def slurm_alone() -> None:
            array = subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}", "--cpus-per-task=1",
                                    "--output=/dev/null", "--wrap", "true"], env=env, check=True, capture_output=True,
                                   text=True).stdout.strip()
            while True:
                states = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", array, "-o", "%T"], env=env,
                                        capture_output=True, text=True).stdout.split()
                if len(states) == n and all(state == "COMPLETED" for state in states):
                    return
                time.sleep(0.1)

        ctl = ControllerProc(flags=("--docker", "none", "--slurm-partition", slurm.PARTITION, "--slurm-conf",
                                    str(conf)))
        try:
            client = ctl.client()
            client.submit(["true"], executor="slurm", cpu=1, reuse=False).wait(timeout=60)  # Slurm's first is slow

            def through_jobnest(cpu: float) -> None:
                jobs = client.map(["true"], range(n), cpu=cpu, executor="slurm", reuse=False)
                client.wait([j.uuid for j in jobs], timeout=600)
                assert {j.state for j in jobs} == {"succeeded"}

            theirs = timed(slurm_alone)
            whole = timed(lambda: through_jobnest(1))
            quarter = timed(lambda: through_jobnest(0.25))
        finally:
            ctl.stop()
    cpus = os.cpu_count()
    rows.append((f"Slurm: {n} whole-core jobs vs `sbatch --array` of the same, ratio", whole / theirs, "<= 1.2x",
                 whole / theirs <= 1.2))
    rows.append((f"Slurm: {n} quarter-core jobs (in blocks), s", quarter, "(info)", None))
    notes.append(f"Slurm ({cpus} CPUs, one node, on this machine): {n} `true` jobs of cpu=1 through jobnest drained "
                 f"in {whole:.1f} s; `sbatch --array=0-{n - 1} --wrap true` straight to Slurm in {theirs:.1f} s; the "
                 f"same {n} at cpu=0.25, packed into blocks, in {quarter:.1f} s.")


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

        floor = best(lambda r: subprocess.run(f"seq {n} | xargs -P 2 -n 1 true", shell=True, check=True))
        for name, fn, target in (("chain", chain, 3.0), ("fan-out/fan-in", fan, None)):
            first = best(lambda r: fn(f"{name}-{r}"))  # each round new jobs, none reused
            again = timed(lambda: fn(f"{name}-0"))
            if target is None:
                rows.append((f"{n}-job {name}, first run (s)", first, f"xargs -P 2: {floor:.2f} s", None))
            else:
                rows.append((f"{n}-job {name}, first run (s)", first, f"<= {target:g} s", first <= target))
            rows.append((f"{n}-job {name}, reused rerun (s)", again, "", None))
            notes.append(f"{n}-job {name}: first run (best of {ROUNDS}, each of new jobs) {first / floor:.1f}x and "
                         f"reused rerun {again / floor:.1f}x the time of `xargs -P 2` running the same {n} commands "
                         f"({floor:.2f} s, best of {ROUNDS}).")
    finally:
        ctl.stop()


SNAKEFILE = """
rule all:
    input: "all.txt"

rule one:
    output: "out/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"

rule gather:
    input: expand("out/{{i}}.txt", i=range({n}))
    output: "all.txt"
    shell: "cat {{input}} > {{output}}"
"""


def bench_snakemake(n: int, rows: list, notes: list) -> None:
    """A Snakefile of n instances of a one-line shell rule and a gather, run by `snakemake
    --executor jobnest -j 100` (the plugin in plugins/) and by Snakemake's own local executor."""
    ctl = ControllerProc()
    root = Path(tempfile.mkdtemp(prefix="jobnest-bench-", dir="/tmp"))
    env = {**os.environ, "JOBNEST_CONTROLLER": ctl.address, "JOBNEST_TOKEN": TOKEN}
    env.pop("JOBNEST_JOB", None)

    def run(name: str, *args: str) -> float:
        folder = root / name
        folder.mkdir()
        (folder / "Snakefile").write_text(SNAKEFILE.format(n=n))
        os.sync()
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "snakemake", "-q", *args], cwd=folder, env=env,
                              capture_output=True, text=True)
        took = time.perf_counter() - start
        if done.returncode or len((folder / "all.txt").read_text().split()) != n:
            raise RuntimeError(f"snakemake {' '.join(args)} failed: {done.stderr[-500:]}")
        return took

    try:
        local = run("local", "--cores", "2")
        ours = run("jobnest", "--executor", "jobnest", "-j", "100")
    finally:
        ctl.stop()
        shutil.rmtree(root, ignore_errors=True)
    rows.append((f"Snakemake, {n} rule instances + gather: --executor jobnest -j 100 (s)", ours, "(info)", None))
    rows.append(("Snakemake, the same: its local executor --cores 2 (s)", local, "(info)", None))
    rows.append(("Snakemake: jobnest executor / local executor, ratio", ours / local, "<= 1x", ours / local <= 1))
    notes.append(f"Snakemake: {n} instances of `echo {{wildcards.i}} > {{output}}` and one `cat` gather, from "
                 f"Snakemake's start to its end, once each: {ours:.1f} s with `--executor jobnest -j 100` (a job of "
                 f"one core each on the controller's own node, submitted in batches), {local:.1f} s with Snakemake's "
                 "local executor and `--cores 2`. Both keep Snakemake's default of 100 new jobs a second "
                 "(`--max-jobs-per-timespan`).")


def xargs_floor(n: int) -> float:
    """`xargs -P 2` running the map's n shell commands, each writing into a folder made beforehand."""
    root = Path(tempfile.mkdtemp(prefix="jobnest-bench-", dir="/tmp"))
    try:
        for i in range(n):
            (root / str(i)).mkdir()
        os.sync()
        command = f"seq 0 {n - 1} | xargs -P 2 -I@ sh -c 'echo @ > {root}/@/n.txt'"
        return timed(lambda: subprocess.run(command, shell=True, check=True))
    finally:
        shutil.rmtree(root)


class Run(NamedTuple):
    """One run of the map + gather program."""

    seconds: float | None  # from the first submit until the gather ended; None: past the budget
    reused: int  # its jobs that reused a run
    ended: int  # its jobs that had ended when it stopped


def map_gather(ctl: ControllerProc, n: int, budget: float) -> Run:
    """The map + gather program as a new user writes it, run once as a driver of its own; past
    `budget` seconds its subtree is cancelled."""
    client = jobnest.Client(ctl.address, TOKEN)  # recorded as a driver job, as `jobnest.connect()` does
    start = time.perf_counter()
    try:
        jobs = client.map(MAP_ARGV, range(n))
        gather = client.submit(["sh", "-c", "echo done > {output}/count"], name="gather",
                               inputs={f"x{i}": job.output for i, job in enumerate(jobs)})
        client.wait([gather.uuid], timeout=max(1.0, budget - (time.perf_counter() - start)))
        seconds = time.perf_counter() - start
        info = gather.info
        assert info.state == "succeeded", (info.state, info.reason)
        return Run(seconds, sum(job.reused for job in jobs) + info.reused, n + 1)
    except jobnest.Timeout:
        if time.perf_counter() - start < budget:
            raise  # one call's own deadline, not the budget
        root = client.driver.uuid  # type: ignore[union-attr]
        ended = sum(i.state in ENDED for i in client.list(subtree=root) if i.uuid != root)
        with contextlib.suppress(jobnest.JobnestError):
            client.cancel(root, reason="over the benchmark's budget")
        return Run(None, 0, ended)
    finally:
        with contextlib.suppress(jobnest.JobnestError):
            client.finish()
        client.close()


class MapGather(NamedTuple):
    floor: float  # `xargs -P 2` running the same shell commands
    first: Run
    again: Run | None  # the same program again; not run when the first run overran its budget


def map_gather_twice(n: int, budget: float, rounds: int = 1) -> MapGather:
    """The map + gather program of n items on a fresh controller of default capacity (so a larger
    run reuses no job of a smaller one), then again on the same controller, every job reused;
    the best of `rounds` such pairs, and of as many `xargs -P 2` runs."""
    floor = min(xargs_floor(n) for _ in range(rounds))
    pairs = []
    for _ in range(rounds):
        os.sync()
        ctl = ControllerProc()
        try:
            first = map_gather(ctl, n, budget)
            again = map_gather(ctl, n, budget) if first.seconds is not None else None
        finally:
            ctl.stop()
        assert again is None or again.reused == n + 1, f"a rerun reused {again.reused} of {n + 1} jobs"
        pairs.append((first, again))
    first, again = min(pairs, key=lambda pair: budget if pair[0].seconds is None else pair[0].seconds)
    return MapGather(floor, first, again)


def budget_row(metric: str, run: Run | None, budget: float, limit: float | None, target: str) -> tuple:
    """A table row for one map + gather run; one past its budget missed any limit within the budget."""
    if run is None:
        return metric, "not run", target, None
    if run.seconds is None:
        return metric, f"> {budget:.0f} s (budget)", target, False if limit is not None and limit <= budget else None
    return metric, run.seconds, target, None if limit is None else run.seconds <= limit


def bench_map_gather(n_small: int, n_large: int, budget: float, rows: list, notes: list) -> None:
    small, large = map_gather_twice(n_small, budget, ROUNDS), map_gather_twice(n_large, budget)
    name = "map + gather, {} jobs, {} (s)".format
    rows.append(budget_row(name(n_small, "first run"), small.first, budget, 5 * small.floor,
                           f"<= 5x xargs -P 2 ({5 * small.floor:.2f} s)"))
    rows.append(budget_row(name(n_small, "reused rerun"), small.again, budget, 0.3, "<= 0.3 s"))
    limit = 12 * small.first.seconds if small.first.seconds is not None else None
    rows.append(budget_row(name(n_large, "first run"), large.first, budget, limit,
                           f"<= 12x the {n_small}-job run" + (f" ({limit:.0f} s)" if limit else "")))
    rows.append(budget_row(name(n_large, "reused rerun"), large.again, budget, None, "(info)"))
    notes.append(f"Map + gather: per size a fresh controller of default capacity (2 cores here) and jobs with "
                 f"default resources (1 cpu each: 2 at a time, as `xargs -P 2`). A client recorded as a driver "
                 f"submits `client.map({MAP_ARGV}, range(N))` (one batch), then one gather job `sh -c 'echo done "
                 f"> {{output}}/count'` with inputs x0..x(N-1) the map jobs' outputs, so it waits for all to "
                 f"succeed; timed from the first submit until `client.wait` saw the gather end (it must have "
                 f"succeeded). The rerun is the same program again (a new driver) on the same controller, and "
                 f"every job in it must reuse. A run past {budget:.0f} s is cancelled and recorded as over budget. "
                 f"For {n_small} jobs, the best of {ROUNDS} such pairs (each on a fresh controller) against the "
                 f"best of {ROUNDS} `xargs` runs; for {n_large}, one of each.")
    for n, r in ((n_small, small), (n_large, large)):
        if r.first.seconds is None:
            ran = f"the first run passed its {budget:.0f} s budget with {r.first.ended} of {n + 1} jobs ended"
        else:
            ran = f"first run {r.first.seconds:.2f} s ({r.first.seconds / r.floor:.1f}x)"
        if r.again is not None and r.again.seconds is not None:
            ran += f", reused rerun {r.again.seconds:.2f} s ({r.again.seconds / r.floor:.2f}x)"
        notes.append(f"map + gather, {n} jobs: `xargs -P 2` ran the same {n} shell commands (`sh -c 'echo I > "
                     f"DIR/I/n.txt'`, folders made beforehand) in {r.floor:.2f} s; {ran}.")


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
    def fmt(v: float | str) -> str:
        if isinstance(v, str):
            return v  # not a number: over its budget, or not run
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
    parser.add_argument("--only", action="append", default=[], help="run only this section (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench.md"), help="markdown report path")
    args = parser.parse_args()
    k = 10 if args.quick else 1
    rows: list = []
    notes: list = []
    started = time.monotonic()
    failed = False
    for section, fn in [("submit", lambda: bench_submit(2000 // k, 20000 // k, 10000 // k, rows, notes)),
                        ("queued", lambda: bench_queued(100000 // k, rows, notes)),
                        ("cancel", lambda: bench_cancel(10000 // k, rows, notes)),
                        ("local", lambda: bench_local(500 // k, rows, notes)),
                        ("output", lambda: bench_output(100000 // k, rows, notes)),
                        ("tree", lambda: bench_tree(100000 // k, rows, notes)),
                        ("workflows", lambda: bench_workflows(1000 // k, rows, notes)),
                        ("map + gather", lambda: bench_map_gather(1000 // k, 10000 // k, 600 / k, rows, notes)),
                        ("snakemake", lambda: bench_snakemake(1000 // k, rows, notes)),
                        ("web", lambda: bench_web(10000, 1000 // k, 10, rows, notes)),
                        ("shim", lambda: bench_shim(1000 // k, rows, notes)),
                        ("slurm", lambda: bench_slurm(200 // k, rows, notes)),
                        # last: the engine goes on removing its containers for a while, on the same cores
                        ("docker", lambda: bench_docker(max(3, 30 // k), rows, notes))]:
        if args.only and section not in args.only:
            continue
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
