"""Why a job ran or reused: its signature's parts against an earlier run, of its signature or its name.

`Store` takes `Explain` as a part; `jobnest why` reads it through the Why call.
"""

import json
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .auth import Caller
from .models import jobs, runs
from .states import State

if TYPE_CHECKING:
    from .store import Store


class Explain:
    def why(self: "Store", job_uuid: str, caller: Caller) -> dict[str, Any]:
        """Whether a job ran or reused, and why: an earlier run with its very signature that
        could not be reused says why not (invalidated, ended badly, reuse off); else the nearest
        earlier run of its name says which parts differed, naming the inputs that changed. Only
        runs that `caller` may see are compared with."""
        job = self.get_job(job_uuid)
        with self.read() as conn:
            run = conn.execute(sa.select(runs).where(runs.c.uuid == job["run_uuid"])).mappings().one()
            parts = json.loads(run["sig_parts"])
            answer = {"reused": bool(job["reused"]), "run_uuid": run["uuid"], "parts": parts, "compared": None}
            if job["reused"]:
                origin = self.job_scope(run["origin_job_uuid"])
                by = f"job {run['origin_job_uuid']}" if caller.sees(*origin) else "another user's job"
                return {**answer, "explanation": f"reused run {run['uuid']} (started by {by}, {run['state']})"}
            if not job["started_at"]:  # its run never started, or not before the job ended apart
                ended = f"it was {job['state']} before it started" if State(job["state"]).terminal else \
                    f"it is {job['state']}: {job['reason'] or 'waiting'}"
                return {**answer, "explanation": f"has not run: {ended}"}
            mine = sa.select(runs).select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid)).where(
                runs.c.seq < run["seq"])
            if caller.kind != "admin":
                mine = mine.where(jobs.c.owner == caller.name, jobs.c.path.like(caller.path + "%"))
            newest = lambda query: conn.execute(query.order_by(runs.c.seq.desc()).limit(1)).mappings().first()  # noqa: E731
            same = newest(mine.where(runs.c.signature == run["signature"]))
            earlier = same or newest(mine.where(runs.c.name == run["name"]))
        if earlier is None:
            return {**answer, "explanation": f"ran: no earlier run is named {run['name']!r}"}
        old_parts = json.loads(earlier["sig_parts"])
        differing = [p for p in parts if parts[p] != old_parts.get(p)]
        spec = json.loads(job["spec"])
        if differing:
            text = f"ran: differs from run {earlier['uuid']} in {', '.join(differing)}"
            if "inputs" in differing:
                text += f" ({_inputs_changed(json.loads(earlier['spec']), json.loads(run['spec']))})"
        elif earlier["desired"] == "invalid":
            text = f"ran: run {earlier['uuid']} has the same signature but its result was invalidated"
        elif spec.get("no_reuse") or spec.get("driver"):
            text = f"ran: reuse was turned off, though run {earlier['uuid']} has the same signature"
        elif earlier["state"] in (State.FAILED.value, State.CANCELLED.value):
            text = (f"ran: run {earlier['uuid']} has the same signature but ended {earlier['state']}, "
                    "and only succeeded, queued or running runs are reused")
        elif job["owner"] != earlier["owner"]:
            text = (f"ran: run {earlier['uuid']} has the same signature but is another owner's, shared only "
                    "once it succeeded in a container")
        else:
            text = (f"ran: run {earlier['uuid']} has the same signature but is {earlier['state']} with another "
                    "timeout, retries or memory, which change how it ends")
        return {**answer, "explanation": text, "compared": {"uuid": earlier["uuid"], "parts": old_parts},
                "differing": differing}


def _inputs_changed(before: dict[str, Any], now: dict[str, Any]) -> str:
    """Which inputs differ between two runs' specs: `x: 1a2b3c4d -> 9f8e7d6c, y: new`."""
    old, new = before.get("input_data", {}), now.get("input_data", {})
    changed = [f"{name}: {old[name][:8]} -> {new[name][:8]}" for name in sorted(old.keys() & new.keys())
               if old[name] != new[name]]
    changed += [f"{name}: new" for name in sorted(new.keys() - old.keys())]
    changed += [f"{name}: gone" for name in sorted(old.keys() - new.keys())]
    return "inputs " + ", ".join(changed)
