"""jobnest: everything is a job.

    import jobnest
    client = jobnest.connect()
    job = client.submit(["echo", "hi"], cpu=0.25)
    job.wait(); print(job.state, job.logs())
"""

from ._client import Client, Job, JobInfo, connect, current_job, race
from ._conditions import Condition
from .errors import (Conflict, InvalidSpec, JobnestError, NotFound, PermissionDenied, Timeout, Unauthenticated,
                     Unavailable)

__all__ = [
    "Client", "Condition", "Conflict", "InvalidSpec", "Job", "JobInfo", "JobnestError", "NotFound", "PermissionDenied",
    "Timeout", "Unauthenticated", "Unavailable", "connect", "current_job", "race",
]
