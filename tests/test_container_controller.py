"""The controller itself in a container (testcontainers, the local jobnest image): a pipeline
submitted to its published port runs inside it, and its tree comes back whole."""

import os
import time
from pathlib import Path


import jobnest

from .conftest import JOBNEST_IMAGE, require_engine

TOKEN = "container-admin-token-0123"
ROOT = Path(__file__).resolve().parent.parent


def test_pipeline_on_a_controller_in_a_container() -> None:
    require_engine()
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # its reaper image cannot be pulled here
    from testcontainers.core.container import DockerContainer

    command = "jobnest controller --listen 0.0.0.0:7070 --docker none --home /var/lib/jobnest"
    container = (DockerContainer(JOBNEST_IMAGE).with_command(command).with_exposed_ports(7070)
                 .with_env("JOBNEST_ADMIN_TOKEN", TOKEN)
                 .with_kwargs(labels={"jobnest.test": "container-controller"}, init=True))
    with container:
        # Published on every address of this machine: reach it on loopback.
        client = jobnest.Client(f"127.0.0.1:{container.get_exposed_port(7070)}", TOKEN, driver=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.status()
                break
            except jobnest.Unavailable:
                assert time.monotonic() < deadline, container.get_logs()
                time.sleep(0.2)
        runner = client.submit_program(ROOT / "examples" / "pipeline.py", "runner", name="pipeline", cpu=0.1,
                                       python="python")  # the controller's, in its container
        runner.wait(timeout=120)
        assert runner.state == "succeeded", runner.logs(stream="stderr")
        jobs = {j.name: j for j in client.list(subtree=runner.uuid)}
        assert set(jobs) == {"pipeline", "align-a", "align-b", "call-variants", "call-chr1", "call-chr2"}
        assert jobs["call-chr1"].spawned_by_job_uuid == jobs["call-variants"].uuid
        assert jobs["call-variants"].spawned_by_job_uuid == runner.uuid
        assert "calling chr1" in client.job(jobs["call-chr1"].uuid).logs()
