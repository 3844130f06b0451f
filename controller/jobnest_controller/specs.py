"""Checking a submitted JobSpec and turning it into the dict the store keeps.

Every problem names its field (`jobs[2].cpu`) so the caller knows what to fix; nothing is stored
unless the whole batch is valid.
"""

import math
import os
import re
from collections.abc import Callable
from typing import Any

from jobnest.errors import InvalidSpec
from jobnest.v1 import jobnest_pb2 as pb

from . import conditions
from .data import is_digest
from .executors.base import PLACEHOLDER
from .scheduler import gib

MAX_NAME = 200
# Every text field has a limit: what is stored is listed and sent back, job after job.
MAX_TEXT = {"image": 1024, "cwd": 4096, "cache_version": 256, "driver_host": 255}
MAX_ARGS = 2**20  # characters of argv in all, and of env in all (Linux takes about 2 MiB for both)
MAX_LABELS, MAX_LABEL = 64, 256
MAX_PID = 2**22  # Linux's largest pid_max
BATCH_REF = re.compile(r"@[0-9]{1,9}")  # "@N": job N of the same request
INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def validate(msg: pb.JobSpec, index: int, *, max_cpu_millis: int, max_memory: int,
             executors: set[str], default_executor: str) -> dict[str, Any]:
    def bad(name: str, problem: str) -> InvalidSpec:
        return InvalidSpec(problem, field=f"jobs[{index}].{name}")

    argv = list(msg.argv)
    if not argv:
        raise bad("argv", "must not be empty: give the command to run")
    if not argv[0]:
        raise bad("argv[0]", "must not be empty")
    texts = {"name": msg.name, "cwd": msg.cwd, "image": msg.image, "cache_version": msg.cache_version,
             "driver_host": msg.driver_host, "program": msg.program,
             **{f"argv[{i}]": a for i, a in enumerate(argv)}, **{f"env[{k!r}]": k + v for k, v in msg.env.items()},
             **{f"labels[{k!r}]": k + v for k, v in msg.labels.items()}}
    for where, text in texts.items():
        if "\0" in text:
            raise bad(where, "must not contain a NUL character")
    for where, limit in MAX_TEXT.items():
        if len(getattr(msg, where)) > limit:
            raise bad(where, f"longer than {limit} characters")
    if sum(map(len, argv)) > MAX_ARGS:
        raise bad("argv", f"longer than {MAX_ARGS} characters in all")
    if sum(len(k) + len(v) for k, v in msg.env.items()) > MAX_ARGS:
        raise bad("env", f"longer than {MAX_ARGS} characters in all")
    if len(msg.labels) > MAX_LABELS or any(len(k) > MAX_LABEL or len(v) > MAX_LABEL for k, v in msg.labels.items()):
        raise bad("labels", f"more than {MAX_LABELS} labels, or one longer than {MAX_LABEL} characters")
    name = msg.name or os.path.basename(argv[0].rstrip("/")) or "job"
    if len(name) > MAX_NAME:
        raise bad("name", f"longer than {MAX_NAME} characters")
    for key in msg.env:
        if not key or "=" in key:
            raise bad("env", f"{key!r} is not a variable name")
    if msg.driver:
        if not 0 < msg.driver_pid <= MAX_PID:
            raise bad("driver_pid", f"a driver names its process id (1 to {MAX_PID}), not {msg.driver_pid}")
        cpu_millis, executor = 0, "driver"
    else:
        cpu = msg.cpu if msg.HasField("cpu") else min(1.0, max_cpu_millis / 1000)
        if not (cpu > 0 and math.isfinite(cpu)):
            raise bad("cpu", f"must be a number greater than 0, got {cpu:g}")
        if cpu * 1000 > max_cpu_millis:
            raise bad("cpu", f"{cpu:g} cores is more than the largest node has ({max_cpu_millis / 1000:g})")
        cpu_millis = round(cpu * 1000)
        if cpu_millis < 1:
            raise bad("cpu", f"{cpu:g} is less than the smallest share, 0.001")
        executor = msg.executor or default_executor
        if msg.image and not msg.executor and executor == "local":  # an image asks for a container
            containers = sorted(executors - {"local"}, key=lambda name: name != "docker")
            if not containers:
                raise bad("image", "an image runs in a container, and this controller has no container executor "
                                   "(docker, kubernetes)")
            executor = containers[0]
        if executor not in executors:
            raise bad("executor", f"unknown executor {executor!r} (known: {', '.join(sorted(executors))})")
        if msg.image and executor == "local":
            raise bad("image", "a local job runs on the host, in no image: leave the executor out (a container "
                               "executor is picked) or name docker or kubernetes")
    if msg.memory < 0:
        raise bad("memory", f"must not be negative, got {msg.memory}")
    if msg.memory > max_memory:
        raise bad("memory", f"{gib(msg.memory)} is more than the largest node has ({gib(max_memory)})")
    if not (msg.timeout >= 0 and math.isfinite(msg.timeout)):
        raise bad("timeout", f"must be a number of seconds >= 0, got {msg.timeout:g}")
    if not 0 <= msg.retries <= 100:
        raise bad("retries", f"must be between 0 and 100, got {msg.retries}")
    memory_on_oom = msg.memory_on_oom or 1.0
    if not (1.0 <= memory_on_oom <= 64 and math.isfinite(memory_on_oom)):
        raise bad("memory_on_oom", f"must be a factor between 1 and 64, got {msg.memory_on_oom:g}")
    if msg.cwd and not os.path.isabs(msg.cwd):
        raise bad("cwd", f"must be an absolute path, got {msg.cwd!r}")
    spec: dict[str, Any] = {
        "name": name, "argv": argv, "env": dict(msg.env), "cwd": msg.cwd, "image": msg.image,
        "cpu_millis": cpu_millis, "memory": msg.memory, "priority": msg.priority, "executor": executor,
        "timeout": msg.timeout, "cache_version": msg.cache_version, "labels": dict(msg.labels),
        "no_reuse": msg.no_reuse, "program": msg.program, "retries": msg.retries, "memory_on_oom": memory_on_oom,
    }
    if msg.mount_cwd:
        if msg.cwd in ("", "/"):
            raise bad("mount_cwd", "needs a cwd to mount, other than /")
        spec["mount_cwd"] = True
    if msg.when:
        try:
            spec["when"] = conditions.parse(msg.when)
        except InvalidSpec as e:
            raise bad("when", e.problem) from None
    inputs: dict[str, dict[str, str]] = {}
    for key, value in sorted(msg.inputs.items()):
        if not INPUT_NAME.fullmatch(key):
            raise bad(f"inputs[{key!r}]", "an input's name is letters, digits and _ (argv names it {inputs.NAME})")
        kind, _, ref = value.partition(":")
        if kind == "job" and ref and "\0" not in ref:
            inputs[key] = {"job": ref}
        elif kind == "data" and is_digest(ref):
            inputs[key] = {"data": ref}
        else:
            raise bad(f"inputs[{key!r}]", "must be another job's output (job:UUID, or job:@N for job N of the "
                                          f"same request) or an upload (data:DIGEST), got {value!r}")
    for i, arg in enumerate(argv):
        for name in PLACEHOLDER.findall(arg):
            if name.startswith("inputs.") and name[7:] not in inputs:
                raise bad(f"argv[{i}]", f"names {{{name}}}, but the job has no input {name[7:]!r}")
    if inputs:
        spec["inputs"] = inputs
        # A job waits for the jobs whose outputs it reads to succeed.
        waits = [{"job": ref["job"], "is": "succeeded"} for ref in inputs.values() if "job" in ref]
        terms = ([spec["when"]] if "when" in spec else []) + waits
        if terms:
            spec["when"] = terms[0] if len(terms) == 1 else {"and": terms}
    if msg.driver:
        spec.update(driver=True, driver_pid=msg.driver_pid, driver_host=msg.driver_host)
    return spec


def levels(job_specs: list[dict[str, Any]]) -> list[list[int]]:
    """The jobs of a batch in the order their batch-local references ("@N") allow: each level
    names only jobs of the levels before it. Raises InvalidSpec on a reference out of range or a
    cycle."""
    needs: list[set[int]] = []
    for i, spec in enumerate(job_specs):
        refs = {ref for ref in conditions.jobs_of(spec["when"]) if ref.startswith("@")} if "when" in spec else set()
        found = set()
        for ref in sorted(refs):
            if not (BATCH_REF.fullmatch(ref) and int(ref[1:]) < len(job_specs)):
                raise InvalidSpec(f"{ref!r} names no job of this request (it has {len(job_specs)})",
                                  field=f"jobs[{i}].{ref_field(spec, ref)}")
            found.add(int(ref[1:]))
        needs.append(found)
    order: list[list[int]] = []
    placed: set[int] = set()
    while len(placed) < len(job_specs):
        level = [i for i, need in enumerate(needs) if i not in placed and need <= placed]
        if not level:
            start = min(i for i in range(len(job_specs)) if i not in placed)
            cycle = _cycle(needs, start, placed)
            raise InvalidSpec("a cycle through batch-local references: " + " -> ".join(f"jobs[{i}]" for i in cycle),
                              field=f"jobs[{cycle[0]}].{ref_field(job_specs[cycle[0]], f'@{cycle[1]}')}")
        order.append(level)
        placed.update(level)
    return order


def _cycle(needs: list[set[int]], start: int, placed: set[int]) -> list[int]:
    path = [start]
    while True:
        step = min(needs[path[-1]] - placed)
        if step in path:
            return path[path.index(step):] + [step]
        path.append(step)


def rename_refs(spec: dict[str, Any], name: Callable[[str], str]) -> None:
    """Replace each job reference of a spec (in its condition and its inputs) by `name(ref)`."""
    if "when" in spec:
        spec["when"] = conditions.rename(spec["when"], name)
    if "inputs" in spec:
        spec["inputs"] = {k: {"job": name(v["job"])} if "job" in v else v for k, v in spec["inputs"].items()}


def ref_field(spec: dict[str, Any], ref: str) -> str:
    """Where a reference was written: an input, or the condition."""
    for name, value in spec.get("inputs", {}).items():
        if value.get("job") == ref:
            return f"inputs[{name!r}]"
    return "when"
