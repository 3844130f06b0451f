"""Conditions for `submit(..., when=...)`: `a.succeeded & ~b.failed`, `a.done | b.cancelled`.

They are sent to the controller as JSON and kept and evaluated there, so they hold after the
program that submitted them has exited.
"""

from __future__ import annotations

import json
from typing import Any


class Condition:
    def __init__(self, tree: dict[str, Any]) -> None:
        self.tree = tree

    @classmethod
    def of(cls, job_uuid: str, predicate: str) -> Condition:
        return cls({"job": job_uuid, "is": predicate})

    def __and__(self, other: Condition) -> Condition:
        return self._join("and", other)

    def __or__(self, other: Condition) -> Condition:
        return self._join("or", other)

    def _join(self, op: str, other: Condition) -> Condition:
        """`a & b & c` as one flat "and" of three, however long the chain: no deep nesting."""
        parts = [part for c in (self, other) for part in (c.tree[op] if op in c.tree else [c.tree])]
        return Condition({op: parts})

    def __invert__(self) -> Condition:
        return Condition({"not": self.tree})

    def __bool__(self) -> bool:
        raise TypeError("a condition is evaluated by the controller: combine with & | ~, not and/or/not")

    def __repr__(self) -> str:
        return f"Condition({self.to_json()})"

    def to_json(self) -> str:
        return json.dumps(self.tree, separators=(",", ":"))
