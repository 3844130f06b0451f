"""Why a job ran or reused: its signature's parts against the nearest earlier run of its name.

`Store` takes `Explain` as a part; `jobnest why` reads it through the Why call.
"""

import json
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .auth import Caller
from .models import jobs, runs

if TYPE_CHECKING:
    from .store import Store


class Explain:
    def why(self: "Store", job_uuid: str, caller: Caller) -> dict[str, Any]:
        """Whether a job ran or reused, and what differed from the nearest earlier run of its name
        that `caller` may see (another user's runs are not shown, nor compared with)."""
        job = self.get_job(job_uuid)
        with self.read() as conn:
            run = conn.execute(sa.select(runs).where(runs.c.uuid == job["run_uuid"])).mappings().one()
            parts = json.loads(run["sig_parts"])
            if job["reused"]:
                origin = self.job_scope(run["origin_job_uuid"])
                by = f"job {run['origin_job_uuid']}" if caller.sees(*origin) else "another user's job"
                return {"reused": True, "run_uuid": run["uuid"], "parts": parts, "compared": None,
                        "explanation": f"reused run {run['uuid']} (started by {by}, {run['state']})"}
            query = (sa.select(runs).select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid))
                     .where(runs.c.name == run["name"], runs.c.seq < run["seq"]))
            if caller.kind != "admin":
                query = query.where(jobs.c.owner == caller.name, jobs.c.path.like(caller.path + "%"))
            earlier = conn.execute(query.order_by(runs.c.seq.desc()).limit(1)).mappings().first()
        spec = json.loads(job["spec"])
        if earlier is None:
            text = f"ran: no earlier run is named {run['name']!r}"
            return {"reused": False, "run_uuid": run["uuid"], "parts": parts, "compared": None, "explanation": text}
        old_parts = json.loads(earlier["sig_parts"])
        differing = [p for p in parts if parts[p] != old_parts.get(p)]
        if differing:
            text = f"ran: differs from run {earlier['uuid']} in {', '.join(differing)}"
        elif earlier["desired"] == "invalid":
            text = f"ran: run {earlier['uuid']} has the same signature but its result was invalidated"
        elif spec.get("no_reuse") or spec.get("driver"):
            text = f"ran: reuse was turned off, though run {earlier['uuid']} has the same signature"
        else:
            text = (f"ran: run {earlier['uuid']} has the same signature but ended {earlier['state']}, "
                    "and only succeeded, queued or running runs are reused")
        return {"reused": False, "run_uuid": run["uuid"], "parts": parts, "explanation": text,
                "compared": {"uuid": earlier["uuid"], "parts": old_parts}, "differing": differing}
