"""Generated requests to every call: none ends INTERNAL or UNKNOWN, and a refused one changes nothing.

Hypothesis builds the requests (derandomized, so every run of `make test` sends the same ones)
and sends them raw, past the SDK's own checks, as an admin, as a user and as nobody. Jobs that
pass run `true` or a program that does not exist. Over 5,000 requests in all; see `EXAMPLES`.
"""

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobnest.v1 import jobnest_pb2 as pb
from jobnest.v1 import jobnest_pb2_grpc as pb_grpc
from jobnest_controller.app import Controller
from jobnest_controller.models import holdings, jobs, requests, runs, user_tokens

from .conftest import ADMIN, Running, make_settings

EXAMPLES = 700  # per call family below: 8 families, 5,600 requests
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class Fuzzed:
    """A controller (local executor only) and raw stubs to it, as three callers."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.channel = grpc.insecure_channel(running.address)
        self.jobs = pb_grpc.JobServiceStub(self.channel)
        self.data = pb_grpc.DataServiceStub(self.channel)
        user = running.client().create_token("fuzzer")
        self.tokens = [ADMIN, user, "", "not-a-token-at-all"]
        known = running.client().submit(["true"], name="known", cpu=0.1).wait(timeout=20)
        self.known = [known.uuid, known.uuid[:6], known.info.run_uuid, known.info.output]
        self.sent = 0

    def counts(self) -> tuple[int, ...]:
        with self.running.store.read() as conn:
            found = tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                          for t in (jobs, runs, requests, user_tokens, holdings))
        manifests = Path(self.running.controller.settings.home) / "data" / "manifests"
        return (*found, len(os.listdir(manifests)))

    def send(self, call: Callable[..., Any], request: Any, token: str, stream: bool = False) -> None:
        """Send one request; assert it is not INTERNAL or UNKNOWN, and changed nothing if refused."""
        before = self.counts()
        metadata = [("authorization", f"Bearer {token}")] if token else []
        self.sent += 1
        try:
            answer = call(request, metadata=metadata, timeout=1 if stream else 10)  # a watch may wait for ever
            if stream:
                for _ in zip(range(3), answer):  # a few messages, then let go
                    pass
                answer.cancel()
        except grpc.RpcError as e:
            assert e.code() not in FORBIDDEN, f"{e.code()}: {e.details()} for {request!r}"
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                assert self.counts() == before, f"refused ({e.details()}) but the store changed: {request!r}"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    settings_ = make_settings(tmp_path_factory.mktemp("fuzz") / "home", cpu=2.0)
    settings_.docker = []
    controller = Controller(settings_)
    controller.start()
    try:
        yield Fuzzed(Running(controller))
    finally:
        controller.stop(grace=0)


# -- what the requests are made of ---------------------------------------------------------------

text = st.text(max_size=24)
hexish = st.text("0123456789abcdef%_-/.", max_size=40)
floats = st.floats(allow_nan=True, allow_infinity=True)
int32 = st.integers(-2**31, 2**31 - 1)
int64 = st.integers(-2**63, 2**63 - 1)
strings = st.dictionaries(text, text, max_size=3)
tokens = st.sampled_from([0] * 9 + [1] * 9 + [2, 3])  # indexes of `Fuzzed.tokens`: mostly callers it knows


def refs(fuzzed: Fuzzed) -> st.SearchStrategy[str]:
    return st.one_of(text, hexish, st.sampled_from(fuzzed.known))


def conditions(fuzzed: Fuzzed) -> st.SearchStrategy[str]:
    leaf = st.builds(lambda job, what: {"job": job, "is": what}, st.one_of(refs(fuzzed), st.just("@0"), text),
                     st.sampled_from(["succeeded", "failed", "done", "cancelled", "nope"]))
    tree = st.recursive(leaf, lambda kids: st.one_of(
        st.builds(lambda k: {"and": k}, st.lists(kids, max_size=3)),
        st.builds(lambda k: {"or": k}, st.lists(kids, max_size=3)),
        st.builds(lambda k: {"not": k}, kids),
        st.dictionaries(text, kids, max_size=2)), max_leaves=6)
    return st.one_of(text, tree.map(json.dumps), st.just("[]"), st.just("{\"not\": 1}"))


def job_specs(fuzzed: Fuzzed) -> st.SearchStrategy[pb.JobSpec]:
    program = st.one_of(st.just("true"), text.map(lambda t: "/nonexistent/" + t))
    inputs = st.dictionaries(text, st.one_of(text, refs(fuzzed).map(lambda r: "job:" + r),
                                             refs(fuzzed).map(lambda r: "data:" + r)), max_size=2)
    return st.builds(
        pb.JobSpec, name=text, argv=st.one_of(st.just([]), st.lists(text, max_size=3).flatmap(
            lambda rest: program.map(lambda p: [p, *rest]))),
        env=strings, cwd=st.one_of(text, st.just("/tmp"), st.just("/")), image=text,
        cpu=st.one_of(floats, st.just(0.1)), memory=int64, priority=int32, no_reuse=st.booleans(),
        executor=st.one_of(st.sampled_from(["", "local", "docker", "kubernetes"]), text), timeout=floats,
        cache_version=text, labels=strings, driver=st.booleans(), driver_pid=int64, driver_host=text,
        program_archive=st.one_of(st.just(b""), st.binary(max_size=64)), program=st.one_of(st.just(""), text, hexish),
        when=st.one_of(st.just(""), conditions(fuzzed)), retries=int32, memory_on_oom=floats, inputs=inputs,
        mount_cwd=st.booleans())


# -- the calls ---------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_submit(fuzzed: Fuzzed, data: st.DataObject) -> None:
    request = pb.SubmitRequest(request_id=data.draw(st.one_of(st.just(""), text)),
                               jobs=data.draw(st.lists(job_specs(fuzzed), max_size=3)))
    fuzzed.send(fuzzed.jobs.Submit, request, fuzzed.tokens[data.draw(tokens)])


@FUZZ
@given(data=st.data())
def test_calls_that_name_a_job(fuzzed: Fuzzed, data: st.DataObject) -> None:
    ref = data.draw(refs(fuzzed))
    call, request, stream = data.draw(st.sampled_from([
        (fuzzed.jobs.Get, pb.GetRequest(uuid=ref), False), (fuzzed.jobs.Why, pb.WhyRequest(uuid=ref), False),
        (fuzzed.jobs.Logs, pb.LogsRequest(uuid=ref), True),
        (fuzzed.jobs.Invalidate, pb.InvalidateRequest(run_uuid=ref), False),
        (fuzzed.jobs.Pin, pb.PinRequest(uuid=ref, unpin=data.draw(st.booleans())), False),
    ]))
    fuzzed.send(call, request, fuzzed.tokens[data.draw(tokens)], stream)


@FUZZ
@given(data=st.data())
def test_cancel(fuzzed: Fuzzed, data: st.DataObject) -> None:
    request = pb.CancelRequest(uuid=data.draw(refs(fuzzed)), reason=data.draw(st.one_of(text, st.text(min_size=990))))
    fuzzed.send(fuzzed.jobs.Cancel, request, fuzzed.tokens[data.draw(tokens)])


@FUZZ
@given(data=st.data())
def test_list_and_watch(fuzzed: Fuzzed, data: st.DataObject) -> None:
    ref = st.one_of(st.just(""), refs(fuzzed))
    if data.draw(st.booleans()):
        request = pb.ListRequest(subtree=data.draw(ref), parent=data.draw(ref), roots=data.draw(st.booleans()),
                                 states=data.draw(st.lists(st.one_of(text, st.just("running")), max_size=2)),
                                 include_reused=data.draw(st.booleans()), limit=data.draw(int32))
        fuzzed.send(fuzzed.jobs.List, request, fuzzed.tokens[data.draw(tokens)], stream=True)
    else:
        request = pb.WatchRequest(uuids=data.draw(st.lists(refs(fuzzed), max_size=2)), subtree=data.draw(ref))
        fuzzed.send(fuzzed.jobs.Watch, request, fuzzed.tokens[data.draw(tokens)], stream=True)


@FUZZ
@given(data=st.data())
def test_tokens_and_drivers(fuzzed: Fuzzed, data: st.DataObject) -> None:
    call, request = data.draw(st.sampled_from([
        (fuzzed.jobs.CreateToken, pb.CreateTokenRequest(name=data.draw(text), expires_in=data.draw(floats))),
        (fuzzed.jobs.RevokeToken, pb.RevokeTokenRequest(name=data.draw(st.one_of(text, st.just("nobody"))))),
        (fuzzed.jobs.ListTokens, pb.ListTokensRequest()),
        (fuzzed.jobs.Finish, pb.FinishRequest(exit_code=data.draw(int32))),
        (fuzzed.jobs.RenewLease, pb.RenewLeaseRequest()),
        (fuzzed.jobs.Status, pb.StatusRequest()),
        (fuzzed.jobs.Collect, pb.CollectRequest(older_than=data.draw(floats), dry_run=data.draw(st.booleans()))),
    ]))
    token = fuzzed.tokens[data.draw(st.sampled_from([1, 2, 3]))]  # an admin's tokens would be made for real
    fuzzed.send(call, request, token)


@FUZZ
@given(data=st.data())
def test_data_lookups(fuzzed: Fuzzed, data: st.DataObject) -> None:
    digest = st.one_of(hexish, text, st.sampled_from(fuzzed.known), st.just("a" * 64))
    call, request, stream = data.draw(st.sampled_from([
        (fuzzed.data.Missing, pb.BlobRefs(digests=data.draw(st.lists(digest, max_size=3)), size=data.draw(int64)),
         False),
        (fuzzed.data.GetManifest, pb.BlobRef(digest=data.draw(digest)), False),
        (fuzzed.data.Download, pb.BlobRef(digest=data.draw(digest), manifest=data.draw(digest)), True),
    ]))
    fuzzed.send(call, request, fuzzed.tokens[data.draw(tokens)], stream)


@FUZZ
@given(data=st.data())
def test_put_manifest(fuzzed: Fuzzed, data: st.DataObject) -> None:
    entry = st.builds(pb.ManifestEntry, path=st.one_of(text, st.just("a/b"), st.just("../x")),
                      digest=st.one_of(hexish, st.just("a" * 64)), size=int64, executable=st.booleans(),
                      link=st.one_of(st.just(""), text))
    request = pb.Manifest(entries=data.draw(st.lists(entry, max_size=3)), file=data.draw(text))
    fuzzed.send(fuzzed.data.PutManifest, request, fuzzed.tokens[data.draw(tokens)])


@FUZZ
@given(data=st.data())
def test_upload(fuzzed: Fuzzed, data: st.DataObject) -> None:
    chunks = data.draw(st.lists(st.builds(pb.BlobChunk, digest=st.one_of(hexish, st.just("a" * 64)), size=int64,
                                          data=st.binary(max_size=16)), max_size=3))
    fuzzed.send(fuzzed.data.Upload, iter(chunks), fuzzed.tokens[data.draw(tokens)])


def test_the_fuzz_sent_enough(fuzzed: Fuzzed) -> None:
    assert fuzzed.sent >= 5000  # runs last in this module: the count of every request above
