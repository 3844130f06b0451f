"""Suspend and resume: a driver may leave while its jobs run, and pick them up when run again.

    python examples/resume.py --detach   # submit, and leave at once: the jobs go on
    python examples/resume.py            # run again: attaches to the same work, nothing runs twice

The second run submits the same jobs; each attaches to the run already queued, running or
finished (reuse by signature), and the condition, kept by the controller, still holds.
"""

import sys

import jobnest


def main() -> None:
    client = jobnest.connect()
    with client.defaults(cpu=0.1):
        slow = client.submit(["sh", "-c", "sleep 2; echo slow step done"], name="slow-step")
        after = client.submit(["echo", "the step after it"], name="next-step", when=slow.succeeded)
    if "--detach" in sys.argv:
        print(f"submitted {slow.uuid[:8]} and {after.uuid[:8]}; run again without --detach to pick them up")
        return
    after.wait()
    print(client.tree())
    if after.state != "succeeded":
        sys.exit(f"next-step {after.state}: {after.info.reason}")


if __name__ == "__main__":
    main()
