"""Checking a submitted JobSpec and turning it into the dict the store keeps.

Every problem names its field (`jobs[2].cpu`) so the caller knows what to fix; nothing is stored
unless the whole batch is valid.
"""

import math
import os
from typing import Any

from jobnest.errors import InvalidSpec
from jobnest.v1 import jobnest_pb2 as pb

from . import conditions

MAX_NAME = 200


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
             **{f"argv[{i}]": a for i, a in enumerate(argv)}, **{f"env[{k!r}]": k + v for k, v in msg.env.items()}}
    for where, text in texts.items():
        if "\0" in text:
            raise bad(where, "must not contain a NUL character")
    name = msg.name or os.path.basename(argv[0].rstrip("/")) or "job"
    if len(name) > MAX_NAME:
        raise bad("name", f"longer than {MAX_NAME} characters")
    for key in msg.env:
        if not key or "=" in key:
            raise bad("env", f"{key!r} is not a variable name")
    if msg.driver:
        if msg.driver_pid <= 0:
            raise bad("driver_pid", "a driver names its process id")
        cpu_millis, executor = 0, "driver"
    else:
        cpu = msg.cpu if msg.HasField("cpu") else min(1.0, max_cpu_millis / 1000)
        if not (cpu > 0 and math.isfinite(cpu)):
            raise bad("cpu", f"must be a number greater than 0, got {cpu:g}")
        cpu_millis = round(cpu * 1000)
        if cpu_millis < 1:
            raise bad("cpu", f"{cpu:g} is less than the smallest share, 0.001")
        if cpu_millis > max_cpu_millis:
            raise bad("cpu", f"{cpu:g} cores is more than the largest node has ({max_cpu_millis / 1000:g})")
        executor = msg.executor or default_executor
        if executor not in executors:
            raise bad("executor", f"unknown executor {executor!r} (known: {', '.join(sorted(executors))})")
    if msg.memory < 0:
        raise bad("memory", f"must not be negative, got {msg.memory}")
    if msg.memory > max_memory:
        raise bad("memory", f"{msg.memory} bytes is more than the largest node has ({max_memory})")
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
    if msg.when:
        try:
            spec["when"] = conditions.parse(msg.when)
        except InvalidSpec as e:
            raise bad("when", e.problem) from None
    if msg.driver:
        spec.update(driver=True, driver_pid=msg.driver_pid, driver_host=msg.driver_host)
    return spec
