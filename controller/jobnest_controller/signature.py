"""Signatures: what determines a job's result, hashed part by part.

Two jobs with the same signature may share one run. Resources are deliberately not part of it,
and neither are the `JOBNEST_*` variables that the controller injects.
"""

import hashlib
import json
from typing import Any

PARTS = ("image", "argv", "cwd", "env", "cache_version")


def _digest(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


def signature_parts(spec: dict[str, Any]) -> dict[str, str]:
    """The sha256 of each part of `spec` that the result depends on."""
    env = {k: v for k, v in spec.get("env", {}).items() if not k.startswith("JOBNEST_")}
    values = {
        "image": spec.get("image", ""),
        "argv": list(spec["argv"]),
        "cwd": spec.get("cwd", ""),
        "env": env,
        "cache_version": spec.get("cache_version", ""),
    }
    return {part: _digest(values[part]) for part in PARTS}


def signature(parts: dict[str, str]) -> str:
    return _digest(parts)
