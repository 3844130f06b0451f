"""A three-level pipeline: a runner job submits three children, one of them a runner itself.

    python examples/pipeline.py        # run it (on the local controller unless JOBNEST_CONTROLLER is set)
    python examples/pipeline.py        # again: everything is reused

The same file is the driver, the runner and the sub-runner: the role is its first argument.
Every job here is an ordinary job; the runners submit their children with their own job token.
A runner runs in a copy of this folder (`submit_program`), so `jobnest submit examples/pipeline.py
runner` is the same job as the driver's runner: each reuses the other's work.
"""

import sys

import jobnest


def runner(client: jobnest.Client) -> None:
    """Runs as a job: three children, the last of which is itself a runner."""
    with client.defaults(cpu=0.25):
        jobs = [
            client.submit(["sh", "-c", "echo aligning sample A; sleep 0.5"], name="align-a"),
            client.submit(["sh", "-c", "echo aligning sample B; sleep 0.5"], name="align-b"),
            client.submit_program(__file__, "sub-runner", name="call-variants"),
        ]
    _wait_ok(jobs)


def sub_runner(client: jobnest.Client) -> None:
    """Runs as a job under the runner: two grandchildren."""
    with client.defaults(cpu=0.25):
        jobs = [client.submit(["sh", "-c", f"echo calling chr{c}; sleep 0.3"], name=f"call-chr{c}") for c in (1, 2)]
    _wait_ok(jobs)


def driver(client: jobnest.Client) -> None:
    top = client.submit_program(__file__, "runner", name="pipeline", cpu=0.1)
    top.wait()
    print(client.tree())
    if top.state != "succeeded":
        sys.exit(f"pipeline {top.state}: {top.info.reason}")


def _wait_ok(jobs: list[jobnest.Job]) -> None:
    for job in jobs:
        job.wait()
    failed = [j for j in jobs if j.state != "succeeded"]
    if failed:
        sys.exit(f"{len(failed)} job(s) did not succeed: {', '.join(j.name for j in failed)}")


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "driver"
    {"driver": driver, "runner": runner, "sub-runner": sub_runner}[role](jobnest.connect())
