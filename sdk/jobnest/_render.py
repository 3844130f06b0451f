"""Pure renderers for the CLI: job trees (in the manner of `argo get`), tables and durations."""

import time
from collections.abc import Iterable
from typing import Any

from ._client import JobInfo

ICONS = {"queued": "◷", "running": "●", "succeeded": "✔", "failed": "✖", "cancelled": "⊘"}


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def job_duration(job: JobInfo, now: float) -> str:
    if not job.started_at:
        return "-"
    return duration((job.finished_at or now) - job.started_at)


def cpu_text(job: JobInfo) -> str:
    return f"{job.cpu:g}" if job.cpu else "-"


def build_tree(jobs: Iterable[JobInfo], root: str | None = None) -> list[tuple[str, JobInfo, bool]]:
    """Rows (prefix, job, inherited) in tree order.

    A reused job shows, beneath it, the children of the job whose run it reused: that is the work
    it stands for. Those rows are `inherited`.
    """
    by_uuid: dict[str, JobInfo] = {}
    children: dict[str, list[JobInfo]] = {}
    for job in jobs:
        by_uuid[job.uuid] = job
        children.setdefault(job.spawned_by_job_uuid, []).append(job)
    if root is not None:
        tops = [by_uuid[root]] if root in by_uuid else []
    else:
        tops = [j for j in by_uuid.values() if j.spawned_by_job_uuid not in by_uuid]
    rows: list[tuple[str, JobInfo, bool]] = []

    def walk(job: JobInfo, prefix: str, last: bool, top: bool, inherited: bool, seen: frozenset[str]) -> None:
        rows.append(("" if top else prefix + ("└─" if last else "├─"), job, inherited))
        source = job.run_origin_job_uuid if job.reused else job.uuid
        kids = children.get(source, []) if source not in seen else []
        inherit = inherited or job.reused
        below = "" if top else prefix + ("  " if last else "│ ")
        for i, kid in enumerate(kids):
            walk(kid, below, i == len(kids) - 1, False, inherit, seen | {source})

    for top in tops:
        walk(top, "", True, True, False, frozenset())
    return rows


def tree(jobs: Iterable[JobInfo], root: str | None = None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = build_tree(jobs, root)
    if not rows:
        return "no jobs"
    labels = [f"{prefix}{ICONS.get(job.state, '?')} {job.name}" for prefix, job, _ in rows]
    width = max(len("STEP"), *(len(label) for label in labels))
    lines = [f"{'STEP':<{width}}  {'ID':<8}  {'CPU':>5}  {'DURATION':>8}  MESSAGE"]
    for label, (_, job, inherited) in zip(labels, rows):
        note = _note(job, inherited)
        lines.append(f"{label:<{width}}  {job.uuid[:8]}  {cpu_text(job):>5}  {job_duration(job, now):>8}  {note}".rstrip())
    return "\n".join(lines)


def _note(job: JobInfo, inherited: bool) -> str:
    parts = []
    if job.reused:
        parts.append(f"♻ reused run {job.run_uuid[:8]} of job {job.run_origin_job_uuid[:8]}")
    elif inherited:
        parts.append("♻ (reused)")
    if job.state in ("failed", "cancelled") or (job.state == "queued" and job.reason):
        parts.append(job.reason)
    return "; ".join(p for p in parts if p)


def attempt(a: dict[str, Any]) -> str:
    """One attempt of a run, as `show` lists them: `attempt 1: 0.3s on local, 24 MiB: exit code 1`."""
    took = duration(a["finished_at"] - a["started_at"]) if a["started_at"] else "never started"
    memory = f", {a['memory'] / 2**20:g} MiB" if a["memory"] else ""
    return f"attempt {a['attempt']}: {took} on {a['node'] or '?'}{memory}: {a['reason'] or 'exit code 0'}"


def summary(jobs: Iterable[JobInfo], root: str | None = None) -> str:
    """What the tree under `root` shows, each job counted once: "7 jobs: 5 ran (1 failed), 1
    reused, 1 cancelled"; jobs still live as such ("2 running, 3 queued"), never as ran."""
    rows = build_tree(jobs, root)
    counts = {"ran": 0, "failed": 0, "reused": 0, "cancelled": 0, "running": 0, "queued": 0}
    for _, job, inherited in rows:
        if job.reused or inherited:
            counts["reused"] += 1
        elif job.state in ("succeeded", "failed") or job.executor == "driver":  # a driver: the program itself
            counts["ran"] += 1
            counts["failed"] += job.state == "failed"
        else:
            counts[job.state] += 1
    failed = f" ({counts['failed']} failed)" if counts["failed"] else ""
    rest = "".join(f", {counts[state]} {state}" for state in ("cancelled", "running", "queued") if counts[state])
    return f"{len(rows)} jobs: {counts['ran']} ran{failed}, {counts['reused']} reused{rest}"


def table(jobs: Iterable[JobInfo], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"{'ID':<8}  {'STATE':<9}  {'NAME':<24}  {'CPU':>5}  {'DURATION':>8}  PARENT"]
    for j in jobs:
        lines.append(f"{j.uuid[:8]}  {j.state:<9}  {j.name[:24]:<24}  {cpu_text(j):>5}  "
                     f"{job_duration(j, now):>8}  {j.spawned_by_job_uuid[:8] or '-'}")
    return "\n".join(lines)


def tree_with_summary(jobs: Iterable[JobInfo], root: str, now: float | None = None) -> str:
    jobs = list(jobs)
    return tree(jobs, root, now) + "\n" + summary(jobs, root)


def progress(states: Iterable[str]) -> str:
    """The line a waiting driver shows: `jobnest: 22 jobs: ● 8 running  ◷ 4 queued  ✔ 9 succeeded  ✖ 1 failed`."""
    states = list(states)
    counts = {state: states.count(state) for state in ("running", "queued", "succeeded", "failed", "cancelled")}
    return f"jobnest: {len(states)} job{'s' * (len(states) != 1)}: " + "  ".join(
        f"{ICONS[state]} {n} {state}" for state, n in counts.items() if n)


def screen(jobs: Iterable[JobInfo], root: str, height: int = 0, now: float | None = None) -> str:
    """What `watch` draws: a count per state, the tree (its top, if taller than `height` lines,
    with how many more there are) and the summary."""
    jobs = list(jobs)
    counts = {state: 0 for state in ICONS}
    for _, job, _ in build_tree(jobs, root):
        counts[job.state] = counts.get(job.state, 0) + 1
    header = "   ".join(f"{ICONS.get(state, '?')} {n} {state}" for state, n in counts.items() if n)
    lines = tree(jobs, root, now).split("\n")
    room = max(height - 3, 2)  # the header, the summary and the line that says what is left out
    if height and len(lines) > room + 1:
        lines = lines[:room] + [f"… {len(lines) - room} more (jobnest tree {root[:8]} shows all)"]
    return "\n".join([header, *lines, summary(jobs, root)])
