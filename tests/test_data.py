"""Data between jobs: outputs stored by content, inputs mounted read-only, uploads and downloads
over the DataService, result.json, and signatures over input content. Each flow runs on the
local executor and on Docker."""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

import jobnest
from jobnest.v1 import jobnest_pb2 as pb

from jobnest_controller.app import Controller
from jobnest_controller.data import BLOB_REF, Data
from jobnest_controller.executors.base import expand

from .conftest import Running, make_settings


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_an_output_is_stored_by_content_and_read_by_the_next_job(where: tuple[Running, dict[str, Any]],
                                                                   tmp_path: Path) -> None:
    running, options = where
    client = running.client()
    make = client.submit(sh("mkdir -p {output}/sub && echo hello >{output}/sub/greeting && "
                            "echo '{\"n\": 3}' >{output}/result.json"), **options)
    read = client.submit(sh("cat {inputs.made}/sub/greeting >{output}/copy; "
                            "if touch {inputs.made}/new 2>/dev/null; then echo writable; else echo read-only; fi; "
                            "ls -ld {inputs.made}/sub/greeting"), inputs={"made": make.output}, **options)
    assert read.wait(timeout=60).state == "succeeded", read.info.reason
    assert make.result() == {"n": 3}
    digest = make.info.output
    files = {e.path: e for e in client.manifest(digest).entries}
    assert set(files) == {"sub/greeting", "result.json"}
    assert files["sub/greeting"].size == 6
    assert (read.output.download(tmp_path / "got") / "copy").read_text() == "hello\n"
    first, listing = read.logs().splitlines()
    assert listing.startswith("-r--r--r--")  # stored files are read-only
    if options.get("image"):  # a container gets a read-only mount; a process (run as root here) only file modes
        assert first == "read-only"
    assert read.result() is None  # no result.json


def test_uploads_travel_over_the_api_and_are_mounted(where: tuple[Running, dict[str, Any]], tmp_path: Path) -> None:
    running, options = where
    client = running.client()
    folder = tmp_path / "folder"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "a.txt").write_text("alpha\n")
    (folder / "run.sh").write_text("echo ran\n")
    (folder / "run.sh").chmod(0o755)
    (folder / "link").symlink_to("deep/a.txt")
    single = tmp_path / "numbers.csv"
    single.write_bytes(b"1,2\n3,4\n")
    job = client.submit(sh("cat {inputs.dir}/link {inputs.csv}; {inputs.dir}/run.sh"),
                        inputs={"dir": jobnest.upload(folder), "csv": jobnest.upload(single)}, **options)
    assert job.wait(timeout=60).state == "succeeded", job.info.reason
    assert job.logs() == "alpha\n1,2\n3,4\nran\n"
    again = client.upload(folder)
    assert client._unary("Missing", pb.BlobRefs(digests=[e.digest for e in
                         client.manifest(again.digest).entries if e.digest]), stub=client._data).digests == []
    back = client.download(again.digest, tmp_path / "back")
    assert (back / "deep" / "a.txt").read_text() == "alpha\n" and os.readlink(back / "link") == "deep/a.txt"
    assert os.access(back / "run.sh", os.X_OK)
    assert client.download(client.upload(single).digest, tmp_path / "one").read_bytes() == single.read_bytes()


def test_an_upstream_rerun_with_the_same_bytes_keeps_downstream_reuse(where: tuple[Running, dict[str, Any]]
                                                                       ) -> None:
    running, options = where
    client = running.client()

    def pipeline(version: str, text: str) -> tuple[jobnest.Job, jobnest.Job]:
        up = client.submit(sh(f"sleep 0.3; echo {text} >{{output}}/value"), cache_version=version, **options)
        down = client.submit(sh("cat {inputs.v}/value; date +%s%N >{output}/when"), inputs={"v": up.output},
                             name="down", **options)
        assert down.wait(timeout=60).state == "succeeded", down.info.reason
        return up, down

    _, first = pipeline("1", "same")
    up, second = pipeline("2", "same")  # a new upstream run, submitted together with downstream
    assert not up.reused and second.reused
    assert second.info.run_uuid == first.info.run_uuid
    assert "reused run" in client.why(second.uuid)["explanation"]
    _, third = pipeline("3", "different")
    assert not third.reused and third.logs() == "different\n"
    assert client.why(third.uuid)["differing"] == ["inputs"]


def test_a_failed_upstream_cancels_its_readers(where: tuple[Running, dict[str, Any]]) -> None:
    running, options = where
    client = running.client()
    up = client.submit(sh("exit 4"), **options)
    down = client.submit(sh("cat {inputs.v}"), inputs={"v": up.output}, **options)
    assert down.wait(timeout=60).state == "cancelled"
    assert f"({up.uuid[:8]}) failed" in down.info.reason


def test_a_batch_names_its_own_jobs_before_they_exist(running: Running) -> None:
    client = running.client()
    with client.batch() as batch:
        count = batch.submit(sh("seq 5 >{output}/numbers"))
        total = batch.submit(sh("s=0; for n in $(cat {inputs.n}/numbers); do s=$((s+n)); done; "
                                "echo \"{\\\"sum\\\": $s}\" >{output}/result.json"), inputs={"n": count.output})
        after = batch.submit(["true"], when=total.succeeded)
    assert total.result(timeout=30) == {"sum": 15}
    assert after.wait(timeout=30).state == "succeeded"
    assert after.info.spawned_by_job_uuid == count.info.spawned_by_job_uuid


def stored_jobs(client: jobnest.Client) -> int:
    return len(list(client.list()))


@pytest.mark.parametrize("inputs, argv, field, words", [
    ({"x": "/data/raw.csv"}, ["true"], "jobs[0].inputs['x']", "must be another job's output"),
    ({"x": "job:"}, ["true"], "jobs[0].inputs['x']", "must be another job's output"),
    ({"x": "data:abc"}, ["true"], "jobs[0].inputs['x']", "must be another job's output"),
    ({"bad-name": "data:" + "0" * 64}, ["true"], "jobs[0].inputs['bad-name']", "letters, digits and _"),
    ({}, ["cat", "{inputs.y}"], "jobs[0].argv[1]", "no input 'y'"),
    ({"x": "job:" + "ab" * 16}, ["true"], "jobs[0].inputs['x']", "no job"),
    ({"x": "data:" + "0" * 64}, ["true"], "jobs[0].inputs['x']", "no data"),
    ({"x": "job:@3"}, ["true"], "jobs[0].inputs['x']", "names no job of this request"),
])
def test_bad_inputs_are_refused_and_nothing_is_stored(running: Running, inputs: dict[str, str], argv: list[str],
                                                      field: str, words: str) -> None:
    client = running.client()
    with pytest.raises(jobnest.JobnestError, match=words) as caught:
        client.submit(argv, inputs=inputs)
    assert caught.value.field == field and str(caught.value).startswith(field + ":")
    assert stored_jobs(client) == 0


def test_a_cycle_through_batch_local_references_is_refused(running: Running) -> None:
    client = running.client()
    specs = [client.spec(["true"], inputs={"x": "job:@1"}), client.spec(["true"], when=jobnest.Condition.of("@2", "done")),
             client.spec(["true"], inputs={"y": "job:@0"})]
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.inputs\['x'\]: a cycle through batch-local "
                                                  r"references: jobs\[0\] -> jobs\[1\] -> jobs\[2\] -> jobs\[0\]"):
        client.submit_many(specs)
    with pytest.raises(jobnest.InvalidSpec, match="cycle"):
        client.submit_many([client.spec(["true"], when=jobnest.Condition.of("@0", "succeeded"))])
    assert stored_jobs(client) == 0


def test_an_upload_over_the_limit_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    settings.max_upload = 1000
    controller = Controller(settings)
    controller.start()
    try:
        client = Running(controller).client()
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 1001)
        with pytest.raises(jobnest.InvalidSpec, match=r"inputs\['raw'\]: uploading .*1001 bytes is over the "
                                                      r"upload limit of 1000"):
            client.submit(["true"], inputs={"raw": jobnest.upload(big)})
        folder = tmp_path / "parts"  # each file under the limit, together over it
        folder.mkdir()
        for name in "ab":
            (folder / name).write_bytes(name.encode() * 600)
        with pytest.raises(jobnest.InvalidSpec, match="1200 bytes is over the upload limit of 1000"):
            client.upload(folder)
        assert stored_jobs(client) == 0
        data = tmp_path / "home" / "data"
        assert [p for p in data.rglob("*") if p.is_file()] == []
        assert client.upload(tmp_path / "parts" / "a").digest  # one part alone fits
        (folder / "b").write_bytes(b"a" * 600)  # the same content twice: sent and stored once, ...
        assert client.upload(tmp_path / "parts" / "a").digest
        with pytest.raises(jobnest.InvalidSpec, match="entries: its files add up to 1200 bytes"):
            client.upload(folder)  # ... but a job's input folder would hold it twice: 30 times was 3 GB
        (folder / "b").write_bytes(b"a" * 300)
        assert client.upload(folder).digest
    finally:
        controller.stop(grace=0)


def test_the_data_service_refuses_bad_requests_and_keeps_nothing(running: Running, tmp_path: Path) -> None:
    client = running.client()
    data = client._data
    call = lambda name, request, **kw: client._unary(name, request, stub=data, **kw)  # noqa: E731
    good = hashlib.sha256(b"hello").hexdigest()

    def upload(digest: str, size: int, *parts: bytes) -> None:
        chunks = [pb.BlobChunk(digest=digest, size=size, data=parts[0])] + [pb.BlobChunk(data=p) for p in parts[1:]]
        call("Upload", iter(chunks))

    with pytest.raises(jobnest.InvalidSpec, match=r"digests: 'nope' is not a sha256"):
        call("Missing", pb.BlobRefs(digests=["nope"]))
    with pytest.raises(jobnest.InvalidSpec, match=r"digest: the bytes have sha256"):
        upload(good, 5, b"jello")
    with pytest.raises(jobnest.InvalidSpec, match=r"data: more than the 3 bytes announced"):
        upload(good, 3, b"hel", b"lo")
    with pytest.raises(jobnest.InvalidSpec, match=r"data: 4 bytes arrived, not the 5 announced"):
        upload(good, 5, b"hell")
    with pytest.raises(jobnest.NotFound, match="no blob"):
        list(client.read_blob(good, ""))  # an admin reads any blob
    entry = pb.ManifestEntry(path="a", digest=good, size=5)
    with pytest.raises(jobnest.InvalidSpec, match=r"entries\['a'\]: blob .* was not uploaded"):
        call("PutManifest", pb.Manifest(entries=[entry]))
    upload(good, 5, b"he", b"llo")
    assert b"".join(client.read_blob(good, "")) == b"hello"
    for entries, words in [
        ([pb.ManifestEntry(path="../a", digest=good, size=5)], r"entries\['../a'\]: must be a relative path"),
        ([pb.ManifestEntry(path="/a", digest=good, size=5)], "must be a relative path"),
        ([pb.ManifestEntry(path="a", digest=good, size=4)], "has 5 bytes, not 4"),
        ([entry, entry], r"entries\['a'\]: named twice"),
        ([entry, pb.ManifestEntry(path="a/b", digest=good, size=5)], "'a' is both a file and a folder"),
        ([pb.ManifestEntry(path="d/l", link="../../etc/passwd")], "a link must point inside the data"),
        ([pb.ManifestEntry(path="l", link="/etc/passwd")], "a link must point inside the data"),
        ([pb.ManifestEntry(path="a/up", link=".."), pb.ManifestEntry(path="esc", link="a/up/..")],
         r"entries\['esc'\]: a link must point inside the data, and not through another link"),
    ]:
        with pytest.raises(jobnest.InvalidSpec, match=words):
            call("PutManifest", pb.Manifest(entries=entries))
    assert not list((tmp_path / "home" / "data" / "manifests").iterdir())
    with pytest.raises(jobnest.NotFound, match="no data"):
        client.manifest("0" * 64)
    with pytest.raises(jobnest.Unauthenticated):
        jobnest.Client(running.address, "").manifest("0" * 64)
    made = call("PutManifest", pb.Manifest(entries=[entry, pb.ManifestEntry(path="l", link="a")]))
    assert client.manifest(made.digest) == made


def test_an_output_is_stored_once_and_a_changed_blob_is_never_served_or_reused(running: Running,
                                                                              tmp_path: Path) -> None:
    """A stored output folder becomes a link to its tree, whose files are the blobs: each byte
    once. Root (as `make test` runs) can still write to them; the change is caught before the
    bytes are served, laid out for a job, or reused: the blob is moved aside, and the run's
    result is reused no more. A file's mode is its own even when another file has the same bytes;
    a driver, which makes no output, is no input."""
    client = running.client(driver=True)
    made = client.submit(sh("echo first >{output}/value")).wait(timeout=20)
    out = Path(made.info.output_dir)
    blob = Path(running.controller.settings.home) / "data" / "blobs" / hashlib.sha256(b"first\n").hexdigest()[:2] / \
        hashlib.sha256(b"first\n").hexdigest()
    trees = Path(running.controller.settings.home) / "data" / "trees"
    assert out.is_symlink() and out.resolve().parent == trees.resolve()
    assert (out / "value").stat().st_ino == blob.stat().st_ino  # one copy of the bytes
    (out / "value").write_text("changed\n")
    with pytest.raises(jobnest.Corrupt, match="no longer has its digest's bytes"):
        made.output.download(tmp_path / "got")
    reader = client.submit(["cat", "{inputs.x}/value"], inputs={"x": made.output}).wait(timeout=20)
    assert reader.state == "failed" and "could not lay out its inputs: stored blob" in reader.info.reason
    again = client.submit(sh("echo first >{output}/value")).wait(timeout=20)
    assert again.state == "succeeded" and again.info.run_uuid != made.info.run_uuid
    assert (again.output.download(tmp_path / "again") / "value").read_text() == "first\n"
    unseen = client.submit(sh("echo second >{output}/value")).wait(timeout=20)  # changed, never read since
    (Path(unseen.info.output_dir) / "value").write_text("poison\n")
    rerun = client.submit(sh("echo second >{output}/value")).wait(timeout=20)
    assert rerun.info.run_uuid != unseen.info.run_uuid and not rerun.info.reused
    assert Path(rerun.info.output_dir, "value").read_text() == "second\n"
    folder = tmp_path / "modes"
    folder.mkdir()
    for name, mode in (("run.sh", 0o755), ("copy.txt", 0o644)):
        (folder / name).write_text("echo hi\n")
        (folder / name).chmod(mode)
    modes = client.submit(sh("ls -l {inputs.m} | cut -c1-10"), inputs={"m": jobnest.upload(folder)}).wait(timeout=20)
    assert modes.logs().split()[-2:] == ["-r--r--r--", "-r-xr-xr-x"]  # copy.txt, run.sh
    assert client.driver is not None
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.inputs\['x'\]: job .* is a driver program"):
        client.submit(["true"], inputs={"x": client.driver.output})


def test_an_output_stored_again_after_a_stop_halfway_is_stored_alike(tmp_path: Path) -> None:
    """The folder is moved aside, replaced by a link, then removed: a controller killed between
    any two of those steps stores the run's output again, the same, when it restarts."""
    data = Data(str(tmp_path / "data"), 2**20)

    def output(name: str) -> Path:
        folder = tmp_path / name / "out"
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "a").write_text("a\n")
        (folder / "run.sh").write_text("echo hi\n")
        (folder / "run.sh").chmod(0o755)
        return folder

    first = data.ingest(output("first"))
    moved = output("moved")
    moved.rename(moved.with_name("out.stored"))  # killed before the link was made
    linked = output("linked")
    linked.rename(linked.with_name("out.stored"))
    linked.symlink_to(data.materialise(first))  # killed before the folder moved aside was removed
    for folder in (moved, linked):
        assert data.ingest(folder) == first
        assert folder.is_symlink() and not folder.with_name("out.stored").exists()
        assert (folder / "sub" / "a").read_text() == "a\n" and os.access(folder / "run.sh", os.X_OK)


def test_a_manifest_is_written_as_canonical_json_and_scanned_without_parsing(tmp_path: Path) -> None:
    """Manifests are written entry by entry (a big output's is never held whole); the bytes are
    what `json.dumps` with sorted keys makes, so digests stay those of earlier stores."""
    data = Data(str(tmp_path / "data"), 2**20)
    stored = {}
    for text in ("one", 'a "quoted" \\ "sha256":"x"', "é"):
        digest = hashlib.sha256(text.encode()).hexdigest()
        stored[text] = data.receive(iter([(digest, len(text.encode()), text.encode())]))
    files = {"b/é.txt": {"sha256": stored["é"], "size": 2, "x": False},
             'a/"sha256":"' + "0" * 64 + '","size":1,"x":true': {"sha256": stored["one"], "size": 3, "x": True},
             "c": {"link": "b/é.txt"}, "a/z": {"sha256": stored['a "quoted" \\ "sha256":"x"'], "size": 25, "x": False}}
    digest = data.put_manifest(files)
    canonical = json.dumps({"files": files}, sort_keys=True, separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert data.manifest(digest) == {"files": files}
    one = data.put_manifest({"f": files["b/é.txt"]}, file="f")
    assert one == hashlib.sha256(json.dumps({"file": "f", "files": {"f": files["b/é.txt"]}}, sort_keys=True,
                                            separators=(",", ":")).encode()).hexdigest()
    assert data.intact(one) == "f" and data.intact(digest) == ""
    assert (data.materialise(digest) / "c").read_text() == "é"
    assert data.materialise(one).name == "f"
    assert sorted(m[1] for m in BLOB_REF.finditer((tmp_path / "data" / "manifests" / f"{digest}.json").read_text())) \
        == sorted(e["sha256"] for e in files.values() if "sha256" in e)  # the quoted path is no entry


def test_placeholders_spare_shell_variables() -> None:
    argv = ["sh", "-c", "echo {output} ${output} {inputs.a}/x ${inputs.a} {inputs.b}", "{output}"]
    assert expand(argv, {"a": "/in/a"}, "/out") == ["sh", "-c", "echo /out ${output} /in/a/x ${inputs.a} {inputs.b}",
                                                    "/out"]
