"""Retention: what `jobnest gc` (and the `retention` setting) removes, and what it never does.

A job tree (a root job and all it spawned) stays whole while any job of it is live, was made or
ended within the window, or is pinned, or made a run that stays. A run stays while it is live,
ended within the window (it may still be reused), or a kept job names it. Data stays while a
kept run reads it (inputs, program) or made it (output), or while it was stored or named within
the window (an upload not yet submitted; never less than `data.GRACE`). The rest goes: the jobs and the request ids that
named them, the runs with their attempts and folders (logs), the manifests with their trees, the blobs, the
programs, and the holdings that named them.

The rows go in one write, and the data a kept run needs is read in it: a submit that reuses a
run, or names a job's output, either comes first (and what it names is kept) or finds nothing.
Data is removed after, under `data.Recent`'s lock, sparing anything a request named meanwhile.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobnest.errors import NotFound

from .data import Data, remove
from .models import attempts, holdings, jobs, pins, requests, runs
from .programs import Programs
from .states import TERMINAL
from .views import JOB_FROM, STATE, chunks

if TYPE_CHECKING:
    from .store import Store

ENDED = [s.value for s in TERMINAL]
JOB_ENDS = sa.select(jobs.c.uuid, jobs.c.path, jobs.c.run_uuid, jobs.c.created_at, STATE,
                     sa.case((jobs.c.end_state != "", jobs.c.finished_at), else_=runs.c.finished_at),
                     pins.c.job_uuid.is_not(None)).select_from(JOB_FROM.outerjoin(pins, pins.c.job_uuid == jobs.c.uuid))


@dataclass
class Collected:
    jobs: int = 0
    runs: int = 0
    data: int = 0
    blobs: int = 0
    programs: int = 0
    bytes: int = 0


class Retention:
    def pin(self: "Store", uuid: str, unpin: bool, now: float) -> None:
        with self.write() as tx:
            if not tx.conn.execute(sa.select(jobs.c.uuid).where(jobs.c.uuid == uuid)).first():
                raise NotFound(f"no job {uuid}", field="uuid")
            tx.conn.execute(sa.delete(pins).where(pins.c.job_uuid == uuid))
            if not unpin:
                tx.conn.execute(sa.insert(pins).values(job_uuid=uuid, pinned_at=now))

    def collect_rows(self: "Store", cutoff: float, dry_run: bool) -> tuple[int, int, list[str], set[str]]:
        """Remove the job trees and runs past `cutoff` that nothing keeps; returns how many jobs
        and runs went, the runs' folders, and the digests of the data the kept runs need. A dry
        run removes them too, and rolls back."""
        try:
            with self.write() as tx:
                found = _collect_rows(tx.conn, cutoff)
                if dry_run:
                    raise _DryRun(found)
        except _DryRun as e:
            found = e.found
        return found

    def forget_holdings(self: "Store", digests: set[str]) -> None:
        with self.write() as tx:
            for chunk in chunks(sorted(digests)):
                tx.conn.execute(sa.delete(holdings).where(holdings.c.digest.in_(chunk)))


class _DryRun(Exception):
    def __init__(self, found: tuple[int, int, list[str], set[str]]) -> None:
        self.found = found


def _collect_rows(conn: Connection, cutoff: float) -> tuple[int, int, list[str], set[str]]:
    trees: dict[str, list[str]] = {}  # root -> its jobs
    root_of, run_of, kept_roots = {}, {}, set()
    for uuid, path, run_uuid, created, state, finished, pinned in conn.execute(JOB_ENDS):
        root = path.split("/")[1]
        trees.setdefault(root, []).append(uuid)
        root_of[uuid], run_of[uuid] = root, run_uuid
        if pinned or created >= cutoff or state not in ENDED or finished is None or finished >= cutoff:
            kept_roots.add(root)
    found = conn.execute(sa.select(runs.c.uuid, runs.c.origin_job_uuid, runs.c.workdir, runs.c.state,
                                   sa.func.coalesce(runs.c.finished_at, runs.c.created_at))).all()
    origin = {uuid: job for uuid, job, *_ in found}
    recent = {uuid for uuid, _, _, state, ended in found if state not in ENDED or ended >= cutoff}
    while True:  # a kept tree keeps its jobs' runs, and a kept run the tree of the job that made it
        kept_runs = recent | {run_of[job] for root in kept_roots for job in trees[root]}
        more = {root_of[origin[run]] for run in kept_runs if origin[run] in root_of} - kept_roots
        if not more:
            break
        kept_roots |= more
    doomed = [uuid for root, uuids in trees.items() if root not in kept_roots for uuid in uuids]
    for chunk in chunks(doomed):
        conn.execute(sa.delete(jobs).where(jobs.c.uuid.in_(chunk)))
    gone = set(doomed)
    for caller, rid, uuids, _ in conn.execute(sa.select(requests)).all():
        if gone.intersection(json.loads(uuids)):
            conn.execute(sa.delete(requests).where(requests.c.caller == caller, requests.c.request_id == rid))
    removed = [(uuid, workdir) for uuid, _, workdir, *_ in found if uuid not in kept_runs]
    for chunk in chunks([uuid for uuid, _ in removed]):
        conn.execute(sa.delete(runs).where(runs.c.uuid.in_(chunk)))
        conn.execute(sa.delete(attempts).where(attempts.c.run_uuid.in_(chunk)))
    needed: set[str] = set()
    for uuid, spec, output in conn.execute(sa.select(runs.c.uuid, runs.c.spec, runs.c.output)):
        if uuid in kept_runs:
            needed.add(output)
            needed.update(_reads(json.loads(spec)))
    return len(doomed), len(removed), [workdir for _, workdir in removed if workdir], needed - {""}


def _reads(spec: dict[str, Any]) -> list[str]:
    return [*spec.get("input_data", {}).values(), spec.get("program", "")]


def collect(store: "Store", data: Data, programs: Programs, older_than: float, now: float,
            dry_run: bool = False) -> Collected:
    """Remove what nothing keeps (see the module's docstring); returns what went."""
    cutoff = now - older_than
    job_count, run_count, folders, needed = store.collect_rows(cutoff, dry_run)
    done = Collected(jobs=job_count, runs=run_count)
    for folder in folders:
        if Path(folder).exists():
            done.bytes += remove(Path(folder), dry_run)
    files_cutoff = min(cutoff, now - data.recent.grace)
    done.data, done.blobs, freed, gone = data.collect(needed, files_cutoff, dry_run)
    done.bytes += freed
    done.programs, freed, gone_programs = programs.collect(needed, files_cutoff, dry_run)
    done.bytes += freed
    if not dry_run and (gone or gone_programs):
        store.forget_holdings(gone | gone_programs)
    return done


def disk_use(home: Path, store_file: str) -> dict[str, int]:
    """Bytes on disk per part of the home; a file linked from many places counts once (in the
    first part that names it: a tree's files are its blobs)."""
    seen: set[int] = set()
    use = {part: _du(home / folder, seen) for part, folder in
           (("blobs", "data/blobs"), ("data", "data"), ("programs", "programs"), ("runs", "runs"))}
    if store_file:
        use["store"] = sum(_du(Path(store_file + suffix), seen) for suffix in ("", "-wal", "-shm"))
    return use


def _du(top: Path, seen: set[int]) -> int:
    total = 0
    for folder, dirs, files in os.walk(top):
        for name in [*dirs, *files, "."]:
            try:
                st = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # removed meanwhile
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    if top.is_file():
        total += _du_file(top, seen)
    return total


def _du_file(path: Path, seen: set[int]) -> int:
    st = path.lstat()
    if st.st_ino in seen:
        return 0
    seen.add(st.st_ino)
    return st.st_blocks * 512
