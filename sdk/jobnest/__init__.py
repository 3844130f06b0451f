"""jobnest: everything is a job.

    import jobnest
    client = jobnest.connect()
    job = client.submit(["echo", "hi"], cpu=0.25)
    job.wait(); print(job.state, job.logs())
    fit = client.submit(["fit", "{inputs.data}"], inputs={"data": job.output})
    print(fit.result())
"""

from ._client import Client, Job, JobInfo, connect, current_job, race
from ._conditions import Condition
from ._data import Output, Upload, upload
from .errors import (Conflict, Corrupt, InvalidSpec, JobnestError, NotFound, PermissionDenied, ResourceExhausted,
                     Timeout, Unauthenticated, Unavailable)

__all__ = [
    "Client", "Condition", "Conflict", "Corrupt", "InvalidSpec", "Job", "JobInfo", "JobnestError", "NotFound",
    "PermissionDenied", "Output", "ResourceExhausted", "Timeout", "Unauthenticated", "Unavailable", "Upload",
    "connect", "current_job", "race", "upload",
]
