"""`when` conditions: expression trees over other jobs' states, checked and evaluated here.

A condition is JSON: {"job": UUID, "is": PREDICATE}, {"and": [...]}, {"or": [...]} or
{"not": ...}, with the predicates succeeded, failed, cancelled and done. It is evaluated in
three values: true (the job may run), false (it never can: the job is cancelled, naming the job
that decided it) or open (it waits). The reconciler calls `evaluate` as job states change.
"""

import json
from collections.abc import Callable
from typing import Any

from jobnest.errors import InvalidSpec

from .states import State

PREDICATES = ("succeeded", "failed", "cancelled", "done")
MAX_NODES = 100_000

Outcome = tuple[bool | None, str | None]  # (value, the job that decided it)


def parse(text: str) -> dict[str, Any]:
    """The condition in `text`, checked for shape; raises InvalidSpec naming what is wrong."""
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidSpec(f"not a condition: {e}") from None
    count = 0

    def check(node: Any) -> None:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise InvalidSpec(f"more than {MAX_NODES} terms")
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise InvalidSpec(f"{json.dumps(node)[:80]} is not a condition term")
        if "job" in node:
            if node.get("is") not in PREDICATES or not isinstance(node["job"], str) or len(node) != 2:
                raise InvalidSpec(f"{json.dumps(node)[:80]}: a job term is {{'job': UUID, 'is': one of "
                                  f"{', '.join(PREDICATES)}}}")
        elif set(node) in ({"and"}, {"or"}) and isinstance(next(iter(node.values())), list) and node[next(iter(node))]:
            for part in next(iter(node.values())):
                check(part)
        elif set(node) == {"not"}:
            check(node["not"])
        else:
            raise InvalidSpec(f"{json.dumps(node)[:80]} is not a condition term")

    check(tree)
    return tree


def jobs_of(tree: dict[str, Any]) -> set[str]:
    if "job" in tree:
        return {tree["job"]}
    if "not" in tree:
        return jobs_of(tree["not"])
    return set().union(*(jobs_of(part) for part in next(iter(tree.values()))))


def rename(tree: dict[str, Any], name: Callable[[str], str], key: str = "job") -> dict[str, Any]:
    """The condition with each job reference replaced by `name(ref)`, under `key`."""
    if "job" in tree:
        return {key: name(tree["job"]), "is": tree["is"]}
    if "not" in tree:
        return {"not": rename(tree["not"], name, key)}
    op = next(iter(tree))
    return {op: [rename(part, name, key) for part in tree[op]]}


def evaluate(tree: dict[str, Any], states: dict[str, str]) -> Outcome:
    if "job" in tree:
        state = State(states[tree["job"]])
        if not state.terminal:
            return None, None
        value = True if tree["is"] == "done" else state.value == tree["is"]
        return value, tree["job"]
    if "not" in tree:
        value, decider = evaluate(tree["not"], states)
        return (None if value is None else not value), decider
    outcomes = [evaluate(part, states) for part in next(iter(tree.values()))]
    deciding = False if "and" in tree else True  # the value that settles an and (false) or an or (true)
    for value, decider in outcomes:
        if value is deciding:
            return deciding, decider
    if any(value is None for value, _ in outcomes):
        return None, None
    return (not deciding), outcomes[-1][1]
