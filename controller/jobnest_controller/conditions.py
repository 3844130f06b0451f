"""`when` conditions: expression trees over other jobs' states, checked and evaluated here.

A condition is JSON: {"job": UUID, "is": PREDICATE}, {"and": [...]}, {"or": [...]} or
{"not": ...}, with the predicates succeeded, failed, cancelled and done. It is evaluated in
three values: true (the job may run), false (it never can: the job is cancelled, naming the job
that decided it) or open (it waits). The store calls `evaluate` once at submit; the reconciler
keeps the conditions of held jobs in a `Tracker` and tells it as jobs end.
"""

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from jobnest.errors import InvalidSpec

from .states import State

PREDICATES = ("succeeded", "failed", "cancelled", "done")
MAX_NODES = 100_000
MAX_DEPTH = 100  # terms within terms: evaluating them recurses

Outcome = tuple[bool | None, str | None]  # (value, the job that decided it)


class Decision(NamedTuple):
    key: str  # the condition's, as given to `Tracker.add`
    value: bool
    job: str  # the job whose end decided it
    state: str  # how that job ended


def parse(text: str) -> dict[str, Any]:
    """The condition in `text`, checked for shape; raises InvalidSpec naming what is wrong."""
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidSpec(f"not a condition: {e}") from None
    except RecursionError:
        raise InvalidSpec(f"terms nested deeper than {MAX_DEPTH}") from None
    count = 0

    def check(node: Any, depth: int = 1) -> None:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise InvalidSpec(f"more than {MAX_NODES} terms")
        if depth > MAX_DEPTH:
            raise InvalidSpec(f"terms nested deeper than {MAX_DEPTH}")
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise InvalidSpec(f"{json.dumps(node)[:80]} is not a condition term")
        if "job" in node:
            if node.get("is") not in PREDICATES or not isinstance(node["job"], str) or len(node) != 2:
                raise InvalidSpec(f"{json.dumps(node)[:80]}: a job term is {{'job': UUID, 'is': one of "
                                  f"{', '.join(PREDICATES)}}}")
        elif set(node) in ({"and"}, {"or"}) and isinstance(next(iter(node.values())), list) and node[next(iter(node))]:
            for part in next(iter(node.values())):
                check(part, depth + 1)
        elif set(node) == {"not"}:
            check(node["not"], depth + 1)
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


def describe(tree: dict[str, Any], label: Callable[[str], str]) -> str:
    """The condition as people read it: `job align (1a2b3c4d) succeeded and not job qc (…) failed`."""
    if "job" in tree:
        return f"{label(tree['job'])} {'ended' if tree['is'] == 'done' else tree['is']}"
    if "not" in tree:
        return f"not {describe(tree['not'], label)}"
    op = next(iter(tree))
    parts = [describe(part, label) for part in tree[op]]
    return parts[0] if len(parts) == 1 else f" {op} ".join(f"({p})" if " and " in p or " or " in p else p
                                                           for p in parts)


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


class _Term:
    """One node of a tracked condition: a job predicate (a leaf), or an operator over its children."""

    __slots__ = ("op", "parent", "key", "left", "value", "is_")

    def __init__(self, op: str, parent: "_Term | None", key: str, children: int = 0, is_: str = "") -> None:
        self.op, self.parent, self.key, self.is_ = op, parent, key, is_
        self.left = children  # children still open (for "and", "or")
        self.value: bool | None = None


class Tracker:
    """Many conditions evaluated as jobs end, each end touching only the terms that name that job.

    An "and" counts its children still open, and is decided by the first false one or the last
    true one; an "or" the other way round; a "not" flips its child. So a condition over N jobs
    costs O(N) in all, not O(N) every time one of them ends. Keys name the conditions (the
    reconciler uses held runs' uuids)."""

    def __init__(self) -> None:
        self._leaves: dict[str, list[_Term]] = {}  # job uuid -> the open leaves that name it
        self._roots: dict[str, _Term] = {}  # key -> its condition, while it is open

    def __len__(self) -> int:
        return len(self._roots)

    def add(self, key: str, tree: dict[str, Any], states: dict[str, str]) -> list[Decision]:
        """Track `tree` under `key`, with the states of the jobs it names as known now; returns
        the decision if that already decides it."""
        ended: list[tuple[_Term, str, str]] = []  # leaves over jobs that ended already
        self._roots[key] = self._build(tree, None, key, states, ended)
        decided: list[Decision] = []
        for leaf, job, state in ended:
            self._settle(leaf, job, state, decided)
        return decided

    def discard(self, key: str) -> None:
        """Stop tracking `key`; its leaves go when the jobs they name end."""
        self._roots.pop(key, None)

    def ended(self, job: str, state: str) -> list[Decision]:
        """`job` ended in `state`: the conditions that decides."""
        decided: list[Decision] = []
        for leaf in self._leaves.pop(job, []):
            self._settle(leaf, job, state, decided)
        return decided

    def _build(self, tree: dict[str, Any], parent: _Term | None, key: str, states: dict[str, str],
               ended: list[tuple[_Term, str, str]]) -> _Term:
        if "job" in tree:
            job = tree["job"]
            leaf = _Term("job", parent, key, is_=tree["is"])
            state = states.get(job, "")
            if state and State(state).terminal:
                ended.append((leaf, job, state))
            else:
                self._leaves.setdefault(job, []).append(leaf)
            return leaf
        if "not" in tree:
            term = _Term("not", parent, key, 1)
            self._build(tree["not"], term, key, states, ended)
            return term
        op = next(iter(tree))
        term = _Term(op, parent, key, len(tree[op]))
        for part in tree[op]:
            self._build(part, term, key, states, ended)
        return term

    def _settle(self, leaf: _Term, job: str, state: str, decided: list[Decision]) -> None:
        if leaf.value is not None or leaf.key not in self._roots:
            return
        value: bool = True if leaf.is_ == "done" else state == leaf.is_
        term: _Term | None = leaf
        while term is not None:
            term.value = value
            parent = term.parent
            if parent is None:
                if self._roots.get(term.key) is term:  # not a condition this key held before
                    del self._roots[term.key]
                    decided.append(Decision(term.key, value, job, state))  # the end that decided it
                return
            if parent.value is not None:
                return  # decided already by another child
            if parent.op == "not":
                value = not value
            else:
                parent.left -= 1
                settles = value is (parent.op == "or")  # true settles an or, false an and
                if not settles and parent.left:
                    return  # still open
            term = parent
