"""The gRPC API end to end: a real server on a real port, real job processes, real tokens."""

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

import jobnest
from jobnest._data import program_archive
from jobnest.v1 import jobnest_pb2 as pb
from jobnest.v1 import jobnest_pb2_grpc as pb_grpc
from jobnest_controller.store import jobs as jobs_table
from jobnest_controller.store import runs as runs_table

from jobnest_controller.app import Controller

from .conftest import ADMIN, Running, make_settings, wait_for


def counts(running: Running) -> tuple[int, int]:
    with running.store.read() as conn:
        return (conn.execute(sa.select(sa.func.count()).select_from(jobs_table)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar_one())


def raw_submit(running: Running, *specs: pb.JobSpec, token: str = ADMIN) -> grpc.RpcError:
    with grpc.insecure_channel(running.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.JobServiceStub(channel).Submit(pb.SubmitRequest(jobs=list(specs)),
                                                   metadata=[("authorization", f"Bearer {token}")])
    return caught.value


@pytest.mark.parametrize("spec, field, words", [
    (pb.JobSpec(argv=[]), "jobs[0].argv", "must not be empty"),
    (pb.JobSpec(argv=["true"], cpu=0), "jobs[0].cpu", "greater than 0"),
    (pb.JobSpec(argv=["true"], cpu=-1), "jobs[0].cpu", "greater than 0"),
    (pb.JobSpec(argv=["true"], cpu=64), "jobs[0].cpu", "more than the largest node"),
    (pb.JobSpec(argv=["true"], memory=-5), "jobs[0].memory", "must not be negative"),
    (pb.JobSpec(argv=["true"], executor="nomad"), "jobs[0].executor", "unknown executor"),
    (pb.JobSpec(argv=["true"], cwd="relative/dir"), "jobs[0].cwd", "absolute"),
    (pb.JobSpec(argv=["true"], cpu=float("inf")), "jobs[0].cpu", "greater than 0"),
    (pb.JobSpec(argv=["true"], cpu=float("nan")), "jobs[0].cpu", "greater than 0"),
    (pb.JobSpec(argv=["true"], timeout=float("nan")), "jobs[0].timeout", "seconds >= 0"),
    (pb.JobSpec(argv=["echo", "a\0b"]), "jobs[0].argv[1]", "NUL"),
    (pb.JobSpec(argv=["true"], env={"A": "x\0"}), "jobs[0].env['A']", "NUL"),
    (pb.JobSpec(argv=["true"], driver=True), "jobs[0].driver_pid", "process id"),
    (pb.JobSpec(argv=["true"], mount_cwd=True), "jobs[0].mount_cwd", "needs a cwd"),
    (pb.JobSpec(argv=["true"], cpu=1e308), "jobs[0].cpu", "more than the largest node"),
    (pb.JobSpec(argv=["true"], driver=True, driver_pid=1, driver_host="h\0"), "jobs[0].driver_host", "NUL"),
    (pb.JobSpec(argv=["true"], labels={"k": "v\0"}), "jobs[0].labels['k']", "NUL"),
    (pb.JobSpec(argv=["echo", "x" * (2**20 + 1)]), "jobs[0].argv", "longer than"),
    (pb.JobSpec(argv=["true"], env={"A": "x" * (2**20 + 1)}), "jobs[0].env", "longer than"),
    (pb.JobSpec(argv=["true"], labels={"k": "x" * 10_000}), "jobs[0].labels", "longer than"),
    (pb.JobSpec(argv=["true"], image="x" * 10_000), "jobs[0].image", "longer than"),
    (pb.JobSpec(argv=["true"], cwd="/" + "x" * 10_000), "jobs[0].cwd", "longer than"),
    (pb.JobSpec(argv=["true"], cache_version="x" * 10_000), "jobs[0].cache_version", "longer than"),
    (pb.JobSpec(argv=["true"], driver=True, driver_pid=1, driver_host="h" * 10_000), "jobs[0].driver_host",
     "longer than"),
    (pb.JobSpec(argv=["true"], driver=True, driver_pid=2**31), "jobs[0].driver_pid", "process id"),
    (pb.JobSpec(argv=["true"], when='{"not": ' * 1000 + '{"job": "@0", "is": "done"}' + "}" * 1000),
     "jobs[0].when", "deeper than"),
    (pb.JobSpec(argv=["true"], when='{"job": "@\u00b2", "is": "done"}'), "jobs[0].when", "names no job"),
    (pb.JobSpec(argv=["true"], when='{"job": "@' + "1" * 5000 + '", "is": "done"}'), "jobs[0].when", "names no job"),
])
def test_bad_specs_are_refused_and_store_nothing(running: Running, spec: pb.JobSpec, field: str, words: str) -> None:
    running.client().submit(["true"], name="already-there").wait(timeout=20)
    before = counts(running)
    error = raw_submit(running, spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details() and words in error.details()
    assert counts(running) == before


def test_a_program_is_named_by_its_digest_and_no_path_leads_out_of_the_store(running: Running,
                                                                          tmp_path: Path) -> None:
    """A program reference that walks out of the program store to an archive elsewhere on the
    host is refused, and nothing is stored."""
    planted = tmp_path / "elsewhere" / "planted.tar.gz"
    planted.parent.mkdir()
    with open(planted, "wb") as f:
        program_archive(Path(__file__).parent / "shim", f)
    ref = os.path.relpath(str(planted).removesuffix(".tar.gz"), running.controller.programs.root)
    error = raw_submit(running, pb.JobSpec(argv=["true"], program=ref))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "jobs[0].program" in error.details()
    assert counts(running) == (0, 0)


def test_variables_a_user_sets_are_in_the_signature_and_the_controllers_own_win(running: Running) -> None:
    """A JOBNEST_* variable the user sets changes the result, so another job without it does not
    reuse the run (it did: one user could poison another's result); the variables the controller
    sets for every run replace the user's, so they stay out of the signature."""
    client = running.client()
    script = 'echo "$JOBNEST_X $JOBNEST_JOB" > $JOBNEST_OUTPUT/seen'
    poisoned = client.submit(["sh", "-c", script], env={"JOBNEST_X": "poison"}).wait(timeout=20)
    clean = client.submit(["sh", "-c", script]).wait(timeout=20)
    assert not clean.reused and clean.info.run_uuid != poisoned.info.run_uuid
    faked = client.submit(["sh", "-c", script], env={"JOBNEST_JOB": "not-the-job"}).wait(timeout=20)
    assert faked.reused and faked.info.run_uuid == clean.info.run_uuid  # same result: the controller's value wins
    seen = (Path(clean.info.output_dir) / "seen").read_text().split()
    assert seen == [clean.uuid]


def test_a_job_attaches_only_to_a_run_that_would_end_as_its_own_would(running: Running) -> None:
    """A run in flight is shared only by jobs whose options that change how it ends (timeout,
    retries, memory) are the same: another user's identical job with a short timeout made a job
    without one fail."""
    client = running.client()
    hasty = client.submit(["sleep", "1.5"], timeout=0.5)
    patient = client.submit(["sleep", "1.5"])
    assert not patient.reused and patient.info.run_uuid != hasty.info.run_uuid
    alike = client.submit(["sleep", "1.5"], timeout=0.5)
    assert alike.reused and alike.info.run_uuid == hasty.info.run_uuid
    assert (hasty.wait(timeout=20).state, patient.wait(timeout=20).state) == ("failed", "succeeded")
    assert client.submit(["sleep", "1.5"], timeout=0.5).wait(timeout=20).reused  # a success serves any job


def test_a_run_prefix_is_hex_digits_not_a_pattern(running: Running) -> None:
    """`Invalidate` names a run by a prefix of its uuid; `%` or `_` are refused, not matched as
    SQL wildcards (which could name the first of any runs)."""
    client = running.client()
    job = client.submit(["true"], name="kept").wait(timeout=20)
    for prefix in ("%", "____%", job.info.run_uuid[:4] + "%"):
        with pytest.raises(jobnest.InvalidSpec, match="run_uuid"):
            client.invalidate(prefix)
    assert client.submit(["true"], name="kept").wait(timeout=20).reused  # still reusable: nothing was invalidated


def test_a_request_id_and_a_cancel_reason_have_a_length_limit(running: Running) -> None:
    """Unbounded text went into the store as given: a 1 MiB cancel reason on a 500-job subtree
    added 2 GB, after which listings failed."""
    client = running.client()
    job = client.submit(["sleep", "30"])
    with pytest.raises(jobnest.InvalidSpec, match="request_id.*at most"):
        client.submit_many([client.spec(["true"])], request_id="r" * 10_000)
    with pytest.raises(jobnest.InvalidSpec, match="request_id.*NUL"):
        client.submit_many([client.spec(["true"])], request_id="r\0")
    with pytest.raises(jobnest.InvalidSpec, match="reason.*at most"):
        client.cancel(job.uuid, reason="why " * 100_000)
    assert job.state in ("queued", "running") and counts(running) == (1, 1)
    client.cancel(job.uuid, reason="done")


def test_one_bad_job_in_a_batch_stores_none_of_it(running: Running) -> None:
    error = raw_submit(running, pb.JobSpec(argv=["true"]), pb.JobSpec(argv=["true"], cpu=-0.5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "jobs[1].cpu" in error.details()
    assert counts(running) == (0, 0)


def test_sdk_raises_typed_errors_naming_the_field(running: Running) -> None:
    client = running.client()
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.argv") as caught:
        client.submit([])
    assert caught.value.field == "jobs[0].argv" and caught.value.problem.startswith("must not be empty")
    with pytest.raises(jobnest.NotFound) as missing:
        client.get("f" * 32)
    assert missing.value.field == "uuid"
    with pytest.raises(jobnest.InvalidSpec) as unicode:
        client.submit(["true"], env={"é": "a\0"})
    assert unicode.value.field == "jobs[0].env['é']"
    with pytest.raises(jobnest.InvalidSpec, match="memory"):
        client.submit(["true"], memory="lots")
    with pytest.raises(jobnest.NotFound, match="uuid"):
        client.get("f" * 32)
    with pytest.raises(jobnest.NotFound):
        client.cancel("f" * 32)
    with pytest.raises(jobnest.NotFound):
        client.why("f" * 32)
    with pytest.raises(jobnest.NotFound):
        list(client.logs("f" * 32))
    with pytest.raises(jobnest.NotFound, match="uuid: no job 'not-a-uuid' .* or a job's name"):
        client.get("not-a-uuid")  # no job has that name either
    assert counts(running) == (0, 0)


def test_single_submits_of_concurrent_threads_share_a_request_and_keep_their_own_answers(running: Running) -> None:
    """While one thread's submit is in flight, the submits of other threads through the same
    client wait and then go in one request; a bad job among them is refused alone."""
    client = running.client()
    sent: list[int] = []
    send = client._singles._send

    def gated(specs: list[pb.JobSpec]) -> list[jobnest.Job]:
        sent.append(len(specs))
        if len(sent) == 1:  # the first request is held until six more submits wait behind it
            wait_for(lambda: len(client._singles._queue) == 6)
        return send(specs)

    client._singles._send = gated
    outcomes: dict[str, object] = {}

    def submit(name: str, cpu: float) -> None:
        try:
            outcomes[name] = client.submit(["true", name], name=name, cpu=cpu)
        except jobnest.JobnestError as e:
            outcomes[name] = e

    first = threading.Thread(target=submit, args=("first", 0.1))
    first.start()
    wait_for(lambda: sent)
    others = [threading.Thread(target=submit, args=(f"t{i}", 64 if i == 3 else 0.1)) for i in range(6)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(timeout=30)
    assert sent[:2] == [1, 6] and sorted(sent[2:]) == [1] * 6  # refused together: then job by job
    bad = outcomes.pop("t3")
    assert isinstance(bad, jobnest.InvalidSpec) and "jobs[0].cpu" in str(bad)
    assert {name: job.name for name, job in outcomes.items()} == {name: name for name in outcomes}  # type: ignore[union-attr]
    assert counts(running) == (6, 6)


def test_tcp_needs_a_valid_token(running: Running) -> None:
    for token, words in [("", "token is required"), ("bad token!", "no token jobnest made"), ("wrong-but-wellformed", "not recognised")]:
        with pytest.raises(jobnest.Unauthenticated, match=words):
            running.client(token).get("f" * 32)
    error = raw_submit(running, pb.JobSpec(argv=["true"]), token="x" * 20)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert counts(running) == (0, 0)


def test_user_tokens_are_created_by_admins_only(running: Running) -> None:
    token = running.client().create_token("carol")
    carol = running.client(token)
    job = carol.submit(["true"])
    assert job.info.owner == "carol"
    with pytest.raises(jobnest.PermissionDenied):
        carol.create_token("mallory")
    with pytest.raises(jobnest.InvalidSpec, match="name"):
        running.client().create_token("has space")


def test_a_user_token_reaches_only_its_owners_jobs_runs_and_data(running: Running, tmp_path: Path) -> None:
    """Users A and B on one controller: every call of A on B's jobs, runs and data is refused, and
    nothing of B's changes; an admin sees both. Each probe got in before owners were enforced."""
    admin = running.client()
    a = running.client(admin.create_token("alice"))
    b = running.client(admin.create_token("bob"))
    (tmp_path / "secret.txt").write_text("bob's data\n")
    upload = b.upload(tmp_path / "secret.txt")
    theirs = b.submit(["sh", "-c", "cat {inputs.s} > {output}/copy; sleep 30"], name="theirs", cpu=0.1,
                      inputs={"s": upload})
    done = b.submit(["sh", "-c", "echo result > {output}/r"], name="done", cpu=0.1).wait(timeout=20)
    mine = a.submit(["true"], name="mine", cpu=0.1)
    for probe in [lambda: a.get(theirs.uuid), lambda: a.cancel(theirs.uuid), lambda: list(a.logs(done.uuid)),
                  lambda: a.why(done.uuid), lambda: list(a.list(subtree=theirs.uuid)),
                  lambda: list(a.watch(uuids=[theirs.uuid])), lambda: a.invalidate(done.info.run_uuid),
                  lambda: a.submit(["true"], when=jobnest.Job(a, theirs.uuid).succeeded),
                  lambda: a.submit(["true"], inputs={"x": done.output})]:
        with pytest.raises(jobnest.PermissionDenied, match="not one of alice's|outside alice's"):
            probe()
    assert [j.name for j in a.list()] == ["mine"]
    assert sorted(j.name for j in admin.list()) == ["done", "mine", "theirs"]
    assert {j.name: j.owner for j in admin.list()}["mine"] == "alice"
    # Data is reached through what one may read, never by its digest alone.
    for probe in [lambda: a.manifest(upload.digest), lambda: a.download(done.info.output, tmp_path / "got"),
                  lambda: a.submit(["true"], inputs={"x": jobnest.Upload("x", upload.digest)})]:
        with pytest.raises(jobnest.NotFound, match="no data"):
            probe()
    blob = b.manifest(upload.digest).entries[0].digest
    with pytest.raises(jobnest.NotFound):
        list(a.read_blob(blob, upload.digest))
    assert a._unary("Missing", pb.BlobRefs(digests=[blob]), stub=a._data).digests == [blob]  # stored, not hers
    stolen = pb.Manifest(entries=[pb.ManifestEntry(path="s", digest=blob, size=11)])
    with pytest.raises(jobnest.InvalidSpec, match="was not uploaded"):
        a._unary("PutManifest", stolen, stub=a._data)
    assert (b.download(done.info.output, tmp_path / "b") / "r").read_text() == "result\n"
    assert (a.download(mine.wait(timeout=20).info.output, tmp_path / "a")).is_dir()
    assert b.get(theirs.uuid).state == "running" and not done.reused
    again = a.submit(["sh", "-c", "echo result > {output}/r"], name="done", cpu=0.1)
    assert not again.reused  # a local run: never reused across users
    why = a.why(again.uuid)  # and never compared with another user's run, whose parts it would show
    assert why["compared_run"] is None and done.info.run_uuid not in why["explanation"]
    theirs.cancel()


def test_tokens_are_unique_revocable_and_expire(running: Running) -> None:
    admin = running.client()
    carol = admin.create_token("carol")
    for name, error, words in [("carol", jobnest.Conflict, "exists"), ("admin", jobnest.InvalidSpec, "an admin")]:
        with pytest.raises(error, match=words):
            admin.create_token(name)
    with pytest.raises(jobnest.InvalidSpec, match="expires_in"):
        admin.create_token("dave", expires_in=-1)
    brief = admin.create_token("erin", expires_in=1)
    running.client(brief).submit(["true"], cpu=0.1)
    assert [t["name"] for t in admin.tokens()] == ["carol", "erin"]
    with pytest.raises(jobnest.PermissionDenied):
        running.client(carol).tokens()
    admin.revoke_token("carol")
    with pytest.raises(jobnest.Unauthenticated, match="revoked"):
        list(running.client(carol).list())
    wait_for(lambda: time.time() > admin.tokens()[0]["expires_at"])
    with pytest.raises(jobnest.Unauthenticated, match="'erin' has expired"):
        list(running.client(brief).list())
    with pytest.raises(jobnest.NotFound, match="no token named 'carol'"):
        admin.revoke_token("carol")


def test_the_sdk_retries_calls_while_the_controller_is_unavailable(tmp_path: Path) -> None:
    """A controller restarting (or its store away) answers UNAVAILABLE: calls are sent again for a
    few seconds rather than failing the program. Before, the first refusal raised."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path / "home")
    settings.server.listen = f"127.0.0.1:{port}"
    first = Controller(settings)
    first.start()
    client = jobnest.Client(f"127.0.0.1:{port}", ADMIN, driver=False)
    job = client.submit(["true"], cpu=0.1).wait(timeout=20)
    first.stop(grace=0)
    restarted: list[Controller] = []
    threading.Timer(1.0, lambda: restarted.append(Controller(settings)) or restarted[0].start()).start()
    try:
        assert client.get(job.uuid).uuid == job.uuid  # waited for the new controller
        assert restarted and client.submit(["true"], cpu=0.1).wait(timeout=20).state == "succeeded"
    finally:
        wait_for(lambda: restarted)
        restarted[0].stop(grace=0)


def test_open_streams_never_take_the_threads_unary_calls_need(running: Running) -> None:
    """Each open stream holds a server thread. Before, 70 Watch streams took all 64 and every other
    call hung; now a caller holds at most 64 streams, all callers 192, and unary calls keep the rest."""
    admin = running.client()
    job = admin.submit(["sleep", "60"], cpu=0.1)
    tokens = [ADMIN] + [admin.create_token(name) for name in ("s1", "s2", "s3")]
    for token in tokens[1:]:
        running.client(token).submit(["sleep", "60"], name=token, cpu=0.1)
    mine = {token: (job.uuid if token == ADMIN else next(iter(running.client(token).list())).uuid) for token in tokens}
    channel = grpc.insecure_channel(running.address)
    stub = pb_grpc.JobServiceStub(channel)

    def watch(token: str) -> Any:
        return stub.Watch(pb.WatchRequest(uuids=[mine[token]]), metadata=[("authorization", f"Bearer {token}")])

    opened = []
    for token in tokens[:3]:
        for _ in range(64):
            opened.append(watch(token))
            assert next(opened[-1]).initial  # served: it holds a thread now
    with pytest.raises(grpc.RpcError) as caught:
        next(watch(tokens[0]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "of this caller" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        next(watch(tokens[3]))
    assert "192 streams are open" in caught.value.details()
    assert running.client(tokens[3]).get(mine[tokens[3]]).state in ("queued", "running")  # unary still served
    for call in opened:
        call.cancel()

    def opens() -> bool:
        try:
            return next(watch(tokens[3])).initial
        except grpc.RpcError:
            return False

    wait_for(opens)  # closed streams are given back
    channel.close()


def test_a_request_id_used_again_with_other_jobs_is_refused(running: Running) -> None:
    client = running.client()
    [first] = client.submit_many([client.spec(["true"], cpu=0.1)], request_id="req-1")
    [again] = client.submit_many([client.spec(["true"], cpu=0.1)], request_id="req-1")  # a retry
    assert again.uuid == first.uuid
    with pytest.raises(jobnest.InvalidSpec, match="request_id: 'req-1' was the id of another request"):
        client.submit_many([client.spec(["false"], cpu=0.1)], request_id="req-1")
    assert counts(running) == (1, 1)


PROBE = textwrap.dedent("""
    import os, sys, jobnest
    from jobnest.v1 import jobnest_pb2 as pb
    client = jobnest.connect()
    me = jobnest.current_job()
    print("token", os.environ["JOBNEST_TOKEN"])
    child = client.submit(["true"], name="child", cpu=0.1)
    print("child-parent", child.info.spawned_by_job_uuid == me.uuid)
    for what, call in [("get", lambda: client.get(sys.argv[1])), ("cancel", lambda: client.cancel(sys.argv[1])),
                       ("list", lambda: list(client.list(subtree=sys.argv[1]))),
                       ("logs", lambda: list(client.logs(sys.argv[1])))]:
        try:
            call()
            print(what, "allowed")
        except jobnest.PermissionDenied as e:
            print(what, "denied", e)
    print("visible", sorted(j.name for j in client.list()))
    reuser = client.submit(["echo", "shared work"], name="reuser", cpu=0.1).wait()
    print("reused", reuser.reused)
    print("visible-with-reused", sorted(j.name for j in client.list(include_reused=True)))
    mine = client.submit_many([client.spec(["echo", "mine"], cpu=0.1)], request_id="admin-request")
    print("request-id-is-mine", mine[0].info.spawned_by_job_uuid == me.uuid)
    try:
        client.submit_many([pb.JobSpec(argv=["x"], driver=True, driver_pid=1)])
        print("driver allowed")
    except jobnest.PermissionDenied:
        print("driver denied")
    try:
        jobnest.Client(os.environ["JOBNEST_CONTROLLER"], "", driver=False).get(me.uuid)
        print("tokenless allowed")
    except jobnest.Unauthenticated:
        print("tokenless denied")
    child.wait()
""")


def test_job_token_is_confined_to_its_subtree_and_dies_with_its_run(running: Running, tmp_path: Path) -> None:
    client = running.client()
    outsider = client.submit(["sleep", "30"], name="outsider", cpu=0.1)
    client.submit(["echo", "shared work"], name="shared", cpu=0.1).wait(timeout=20)
    admins = client.submit_many([client.spec(["echo", "admin's"], cpu=0.1)], request_id="admin-request")
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    job = client.submit([sys.executable, str(probe), outsider.uuid], name="probe", cpu=0.1).wait(timeout=30)
    out = job.logs()
    assert job.state == "succeeded", job.logs(stream="stderr")
    assert "child-parent True" in out
    for what in ("get", "cancel", "list", "logs"):
        assert f"{what} denied" in out
    assert "visible ['child', 'probe']" in out
    assert "reused True" in out
    assert "visible-with-reused ['child', 'probe', 'reuser']" in out  # not the job that ran it
    assert "request-id-is-mine True" in out
    assert "driver denied" in out and "tokenless denied" in out
    assert admins[0].info.spawned_by_job_uuid == ""
    assert outsider.state == "running"  # the cancel was refused
    children = job.children()
    assert sorted(c.name for c in children) == ["child", "echo", "reuser"]
    assert all(c.info.spawned_by_job_uuid == job.uuid for c in children)
    token = next(line.split()[1] for line in out.splitlines() if line.startswith("token "))
    with pytest.raises(jobnest.Unauthenticated, match="expired"):
        running.client(token).get(job.uuid)
    outsider.cancel()


def test_health_service(running: Running) -> None:
    with grpc.insecure_channel(running.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "jobnest.v1.JobService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_watch_reports_each_change(running: Running) -> None:
    client = running.client()
    job = client.submit(["sh", "-c", "sleep 0.3; exit 4"], cpu=0.5)
    seen = []
    for event in client.watch(uuids=[job.uuid], timeout=20):
        seen.append(event.state)
        if event.state in ("succeeded", "failed", "cancelled"):
            assert event.has_exit_code and event.exit_code == 4
            break
    assert seen[-1] == "failed" and "running" in seen


def test_logs_follow_streams_until_the_end(running: Running) -> None:
    client = running.client()
    job = client.submit(["sh", "-c", "echo one; sleep 0.5; echo two; echo err >&2"], cpu=0.5)
    streamed = list(client.logs(job.uuid, follow=True))
    stdout = b"".join(d for s, d in streamed if s == "stdout")
    assert stdout == b"one\ntwo\n"
    assert b"".join(d for s, d in streamed if s == "stderr") == b"err\n"
    assert job.state == "succeeded"


def test_logs_are_read_from_an_offset_or_the_tail_of_one_stream_at_most_a_limit(running: Running) -> None:
    client = running.client()
    job = client.submit(["sh", "-c", "printf 0123456789; printf err >&2"], cpu=0.1).wait(timeout=20)
    def read(**how: object) -> list[tuple[str, int, bytes]]:
        return [(c.stream, c.offset, c.data) for c in client.log_chunks(job.uuid, **how)]  # type: ignore[arg-type]
    assert read(stream="stdout", offset=-4) == [("stdout", 6, b"6789")]
    assert read(stream="stdout", offset=2, limit=3) == [("stdout", 2, b"234")]
    assert read(offset=-100) == [("stdout", 0, b"0123456789"), ("stderr", 0, b"err")]
    assert read(stream="stderr", offset=50) == []
    with pytest.raises(jobnest.InvalidSpec, match="stream"):
        read(stream="both")
    with pytest.raises(jobnest.InvalidSpec, match="limit"):
        read(follow=True, limit=5)


def test_one_watch_follows_several_subtrees_and_sends_each_change_once(running: Running) -> None:
    client = running.client()
    first, second, other = (client.submit(["sleep", "30"], cpu=0.1, name=n) for n in ("first", "second", "other"))
    events = client.watch(subtrees=[first.uuid, second.uuid, first.uuid], timeout=20)
    initial = [next(events), next(events)]  # the top jobs' states: the watch is on
    assert {(e.uuid, e.initial) for e in initial} == {(first.uuid, True), (second.uuid, True)}
    for job in (other, first, second):
        job.cancel()
    seen = [(e.uuid, e.state) for e in (next(events), next(events))]
    assert sorted(seen) == sorted([(first.uuid, "cancelled"), (second.uuid, "cancelled")])
    with pytest.raises(jobnest.InvalidSpec, match="subtrees"):
        next(client.watch(subtrees=[first.uuid] * 1001))


def test_the_event_of_a_new_job_names_its_parent(running: Running) -> None:
    driver = running.client(driver=True)
    driver.submit(["true"], cpu=0.1)
    events = driver.watch(subtrees=[driver.driver.uuid], timeout=20)  # type: ignore[union-attr]
    assert next(events).initial
    second = driver.submit(["true"], cpu=0.1)
    new = next(e for e in events if e.uuid == second.uuid)
    assert new.spawned_by_job_uuid == driver.driver.uuid  # type: ignore[union-attr]
    driver.close()


def test_list_streams_in_chunks_with_filters(running: Running) -> None:
    client = running.client()
    jobs = client.submit_many([client.spec(["sleep", str(30 + i)], cpu=2) for i in range(5)])
    wait_for(lambda: jobs[0].state == "running")
    listed = list(client.list())
    assert [j.uuid for j in listed] == [j.uuid for j in jobs]
    assert len(list(client.list(states=["queued"]))) == 4  # only one fits the 2-core node
    assert len(list(client.list(limit=2))) == 2
    client.cancel(jobs[0].uuid)
    for j in jobs[1:]:
        j.cancel()


def test_cancel_kills_the_subtree(running: Running, tmp_path: Path) -> None:
    client = running.client()
    runner = tmp_path / "runner.py"
    runner.write_text("import jobnest\nc = jobnest.connect()\nc.submit(['sleep', '60'], cpu=0.1)\n"
                      "c.submit(['sleep', '61'], cpu=0.1).wait()\n")
    top = client.submit([sys.executable, str(runner)], cpu=0.1)
    wait_for(lambda: len(top.children()) == 2 and all(c.state == "running" for c in top.children()))
    cancelled = top.cancel()
    assert len(cancelled) == 3
    top.wait(timeout=20)
    for job in [top, *top.children()]:
        job.wait(timeout=20)
        assert job.state == "cancelled"


def test_why_names_the_differing_part(running: Running) -> None:
    client = running.client()
    first = client.submit(["echo", "a"], name="step").wait(timeout=20)
    again = client.submit(["echo", "a"], name="step")
    assert client.why(again.uuid)["reused"] is True
    changed = client.submit(["echo", "b"], name="step").wait(timeout=20)
    why = client.why(changed.uuid)
    assert why["reused"] is False and why["differing"] == ["argv"]
    assert why["compared_run"] == first.info.run_uuid


def test_scheduler_reason_is_shown(running: Running) -> None:
    client = running.client()
    big = client.submit(["sleep", "30"], cpu=1.5)
    waiting = client.submit(["sleep", "31"], cpu=1)
    wait_for(lambda: waiting.info.reason.startswith("waiting for cpu"))
    assert waiting.info.reason == "waiting for cpu: needs 1 cores, most free is 0.5 of 2 on local"
    full = client.submit(["sleep", "32"], cpu=0.5)
    wait_for(lambda: full.state == "running")
    wait_for(lambda: waiting.info.reason == "waiting for cpu: needs 1 cores, most free is 0 of 2 on local")
    big.cancel()
    wait_for(lambda: waiting.state == "running")
    waiting.cancel()
    full.cancel()


def test_a_watch_of_jobs_ends_when_they_have(running: Running) -> None:
    client = running.client()
    job = client.submit(["true"], cpu=0.1).wait(timeout=20)
    events = list(client.watch(uuids=[job.uuid], timeout=10))  # would raise Timeout if it hung
    assert [e.state for e in events] == ["succeeded"] and events[0].initial


def test_cancel_waits_for_processes_that_ignore_sigterm(running: Running, tmp_path: Path) -> None:
    client = running.client()
    script = "trap '' TERM; sleep 60 & echo $! > " + str(tmp_path / "child") + "; wait"
    job = client.submit(["sh", "-c", script], cpu=0.5)
    wait_for(lambda: (tmp_path / "child").exists() and (tmp_path / "child").read_text().strip())
    child = int((tmp_path / "child").read_text())
    job.cancel()
    time.sleep(1.0)
    assert job.state == "running"  # still holds its cpu: its process lives on
    job.wait(timeout=20)
    assert job.state == "cancelled"
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"


def test_a_driver_that_stops_renewing_its_lease_is_lost_and_its_jobs_go_on(tmp_path: Path) -> None:
    """A driver on another machine that dies was never reaped; now its lease lapses."""
    settings = make_settings(tmp_path / "home")
    settings.driver_lease = 1.0
    controller = Controller(settings)
    controller.start()
    try:
        client = Running(controller).client()
        response = client._stub.Submit(pb.SubmitRequest(jobs=[pb.JobSpec(
            name="far", argv=["x"], driver=True, driver_pid=1, driver_host="another-machine")]),
            metadata=client._metadata())
        driver = response.jobs[0].uuid
        child = client._unary("Submit", pb.SubmitRequest(jobs=[client.spec(["sleep", "2"], cpu=0.1)]),
                              token=response.driver_token).jobs[0].uuid
        assert client._unary("RenewLease", pb.RenewLeaseRequest(), token=response.driver_token).lease == 1.0
        wait_for(lambda: client.get(driver).state == "failed", timeout=20)
        assert "driver lost" in client.get(driver).reason and client.get(child).state == "running"
        wait_for(lambda: client.get(child).state == "succeeded", timeout=20)
    finally:
        controller.stop(grace=0)


DRIVER_EXIT = """
import os, signal, sys, time, jobnest
client = jobnest.connect()
client.submit(["true"], cpu=0.1)
print(client.driver.uuid, flush=True)
if sys.argv[1] == "exit":
    sys.exit(3)
if sys.argv[1] == "term":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
raise RuntimeError("boom")
"""


@pytest.mark.parametrize("how, code", [("exit", 3), ("term", 143), ("raise", 1)])
def test_a_driver_s_exit_code_is_its_job_s(running: Running, how: str, code: int) -> None:
    """Before, `sys.exit(3)` and SIGTERM were recorded as succeeded."""
    env = {**os.environ, "JOBNEST_CONTROLLER": running.address, "JOBNEST_TOKEN": ADMIN}
    done = subprocess.run([sys.executable, "-c", DRIVER_EXIT, how], env=env, capture_output=True, text=True, timeout=60)
    driver = running.client().get(done.stdout.split()[0])
    assert (driver.state, driver.exit_code) == ("failed", code), done.stderr


def test_a_listing_s_chunks_are_bounded_by_bytes(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a chunk was 5,000 rows whatever their size: long reasons made one 525 MB chunk,
    over the message limit, and every listing that held them failed."""
    from jobnest_controller import server
    monkeypatch.setattr(server, "LIST_CHUNK_BYTES", 5000)
    client = running.client()
    jobs = client.submit_many([client.spec(["sleep", "30"], name=f"job{i}", cpu=0.1) for i in range(12)])
    for job in jobs:
        client.cancel(job.uuid, reason="r" * 1000)
    chunks = list(client._stub.List(pb.ListRequest(), metadata=client._metadata()))
    assert len(chunks) >= 3 and all(len(c.SerializeToString()) < 5000 + 2000 for c in chunks)
    assert [u for c in chunks for u in c.uuid] == [j.uuid for j in jobs]
