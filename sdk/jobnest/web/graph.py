"""The dependency picture of a job's children: each child a box coloured by its state, an arrow
from each job it waits on (`when=`, dashed) or reads (`inputs=`, solid), laid out here in layers:
a job stands one column right of the last job it depends on."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from html import escape
from typing import Any

from .._client import Client, JobInfo

MAX_NODES = 300  # beyond this many children the page shows the list only
WIDTH, HEIGHT, GAP_X, GAP_Y, PAD = 180, 34, 60, 12, 10
_specs: weakref.WeakKeyDictionary[Client, dict[str, dict[str, Any]]] = weakref.WeakKeyDictionary()


def specs_of(client: Client, uuids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each job's spec, fetched once per client (a spec never changes)."""
    known = _specs.setdefault(client, {})
    missing = [u for u in uuids if u not in known]
    with ThreadPoolExecutor(8) as pool:
        for info in pool.map(client.get, missing):
            known[info.uuid] = info.spec or {}
    return {u: known[u] for u in uuids}


def _waits_on(condition: Any) -> Iterable[str]:
    if isinstance(condition, dict):
        if "job" in condition:
            yield condition["job"]
        for part in [*condition.get("and", ()), *condition.get("or", ()), *filter(None, [condition.get("not")])]:
            yield from _waits_on(part)


def edges(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(job, "input" or "when") for each job this spec depends on: one arrow per job, an input's
    (which implies waiting for it) over a condition's."""
    found = {ref.removeprefix("job:"): "input" for ref in spec.get("inputs", {}).values() if ref.startswith("job:")}
    for job in _waits_on(json.loads(spec["when"])) if spec.get("when") else ():
        found.setdefault(job, "when")
    return list(found.items())


def svg(jobs: Sequence[JobInfo], specs: dict[str, dict[str, Any]]) -> str:
    index = {j.uuid: i for i, j in enumerate(jobs)}
    deps = {j.uuid: [(d, kind) for d, kind in edges(specs.get(j.uuid, {})) if d in index] for j in jobs}
    column: dict[str, int] = {}
    for j in jobs:  # in submit order, so what a job depends on was placed before it
        column[j.uuid] = 1 + max((column.get(d, 0) for d, _ in deps[j.uuid]), default=-1)
    rows: dict[int, int] = {}
    at: dict[str, tuple[int, int]] = {}
    for j in jobs:
        c = column[j.uuid]
        at[j.uuid] = (PAD + c * (WIDTH + GAP_X), PAD + rows.get(c, 0) * (HEIGHT + GAP_Y))
        rows[c] = rows.get(c, 0) + 1
    width = PAD * 2 + (max(column.values(), default=0) + 1) * (WIDTH + GAP_X) - GAP_X
    height = PAD * 2 + max(rows.values(), default=0) * (HEIGHT + GAP_Y) - GAP_Y
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
             'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z"/></marker></defs>']
    for j in jobs:
        x2, y2 = at[j.uuid]
        for d, kind in deps[j.uuid]:
            x1, y1 = at[d]
            x1, y1, y2m = x1 + WIDTH, y1 + HEIGHT / 2, y2 + HEIGHT / 2
            parts.append(f'<path class="edge {kind}" d="M{x1},{y1} C{x1 + GAP_X / 2},{y1} {x2 - GAP_X / 2},{y2m} '
                         f'{x2},{y2m}" marker-end="url(#arrow)"/>')
    for j in jobs:
        x, y = at[j.uuid]
        name = j.name if len(j.name) <= 22 else j.name[:21] + "…"
        parts.append(f'<a href="/job/{j.uuid}"><g class="node s-{escape(j.state)}" data-uuid="{j.uuid}">'
                     f'<title>{escape(j.name)} ({j.uuid[:8]}): {escape(j.state)}</title>'
                     f'<rect x="{x}" y="{y}" width="{WIDTH}" height="{HEIGHT}" rx="5"/>'
                     f'<text x="{x + 8}" y="{y + 21}">{escape(name)} <tspan class="id">{j.uuid[:8]}</tspan></text>'
                     '</g></a>')
    return "".join(parts) + "</svg>"
