"""Signatures: what determines a job's result, hashed part by part.

Two jobs with the same signature may share one run. Resources are deliberately not part of it,
and neither are the variables the controller sets for every run (`INJECTED`), which replace any
value a spec gives them; every other variable is, `JOBNEST_*` ones included.
"""

import hashlib
import json
from typing import Any

PARTS = ("image", "argv", "cwd", "env", "inputs", "program", "when", "cache_version")
# Set by the reconciler (token, job, run, executor) and by every executor (output, controller).
INJECTED = frozenset({"JOBNEST_TOKEN", "JOBNEST_JOB", "JOBNEST_RUN", "JOBNEST_EXECUTOR", "JOBNEST_OUTPUT",
                      "JOBNEST_CONTROLLER"})


def _digest(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def signature_parts(spec: dict[str, Any]) -> dict[str, str]:
    """The sha256 of each part of `spec` that the result depends on."""
    env = {k: v for k, v in spec.get("env", {}).items() if k not in INJECTED}
    return {
        "image": _digest(spec.get("image_id") or spec.get("image", "")),  # content, not the tag
        "argv": _digest(list(spec["argv"])),
        # a folder of the host mounted at cwd is read, not hashed: it must not match one unmounted
        "cwd": _digest({"cwd": spec["cwd"], "mounted": True} if spec.get("mount_cwd") else spec.get("cwd", "")),
        "env": _digest(env),
        # the inputs' content digests: an upstream rerun that makes the same bytes changes nothing
        # (while an upstream job runs, its run stands in, until the reconciler releases the job)
        "inputs": _digest(spec.get("input_data", {})),
        "program": _digest(spec.get("program", "")),  # the program folder's content digest
        # while a job waits: over the runs, not the jobs, its condition names, so a driver run
        # again waits on the same work. Once the condition holds it changes no result: "".
        "when": _digest(spec.get("when_runs", "")),
        "cache_version": _digest(spec.get("cache_version", "")),
    }


def signature(parts: dict[str, str]) -> str:
    return hashlib.sha256(" ".join(parts[p] for p in PARTS).encode()).hexdigest()
