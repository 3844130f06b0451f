"""The Docker executor against the real Docker Engine that `make test` starts.

Every container a test makes carries the label `jobnest.controller=<its temp home>` and is
removed by that label afterwards.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import jobnest
from jobnest_controller.app import Controller
from jobnest_controller.store import jobs as jobs_table
from jobnest_controller.store import runs as runs_table

from .conftest import (ADMIN, BUSYBOX, ENGINE, JOBNEST_IMAGE, Running, make_settings, remove_containers,
                       require_engine, wait_for)

def in_docker(client: jobnest.Client, argv: list[str], **options: object) -> jobnest.Job:
    return client.submit(argv, executor="docker", image=options.pop("image", BUSYBOX), **options)


def test_a_job_runs_in_a_container_with_its_output_dir(docker_running: Running) -> None:
    client = docker_running.client()
    script = 'echo hello; echo oops >&2; echo "$JOBNEST_JOB" > "$JOBNEST_OUTPUT/who"; cat /proc/1/comm'
    job = in_docker(client, ["sh", "-c", script], cpu=0.5).wait(timeout=60)
    assert job.state == "succeeded", job.info.reason
    assert job.logs() == "hello\ndocker-init\n" and job.logs(stream="stderr") == "oops\n"
    assert Path(job.info.output_dir, "who").read_text().strip() == job.uuid
    assert job.info.node == "docker" and job.info.cpu_enforced


def test_other_users_reuse_only_runs_that_succeeded_in_a_container_with_no_host_folder(docker_running: Running,
                                                                                       tmp_path: Path) -> None:
    """The reuse rule across owners: Bob takes Alice's finished container run, never her run in
    flight (her options could fail it), nor one that read a host folder; Alice shares her own."""
    admin = docker_running.client()
    alice, bob = (docker_running.client(admin.create_token(name)) for name in ("alice", "bob"))
    done = in_docker(alice, ["echo", "made once"], cpu=0.1).wait(timeout=60)
    assert done.state == "succeeded", done.info.reason
    taken = in_docker(bob, ["echo", "made once"], cpu=0.1)
    assert taken.reused and taken.info.run_uuid == done.info.run_uuid and taken.wait(timeout=20).logs() == "made once\n"
    flying = in_docker(alice, ["sleep", "30"], cpu=0.1)
    assert in_docker(alice, ["sleep", "30"], cpu=0.1).reused
    assert not in_docker(bob, ["sleep", "30"], cpu=0.1).reused
    folder = tmp_path / "mounts" / "project"
    folder.mkdir(parents=True)
    mounted = dict(cwd=str(folder), mount_cwd=True, cpu=0.1)
    assert in_docker(alice, ["true"], **mounted).wait(timeout=60).state == "succeeded"
    assert in_docker(alice, ["true"], **mounted).reused and not in_docker(bob, ["true"], **mounted).reused
    assert not in_docker(alice, ["true"], cwd=str(folder), cpu=0.1).reused  # unmounted: another signature
    flying.cancel()


def test_a_job_mounts_only_folders_under_the_allowed_roots_and_nothing_of_the_controller(
        docker_running: Running, tmp_path: Path) -> None:
    """Over TCP a job may mount its cwd only under the controller's mount roots, resolved, and never
    anything of the controller's own or the Docker socket: before, any folder was mounted read-write."""
    client = docker_running.client()
    root = tmp_path / "mounts"
    (root / "project").mkdir(parents=True)
    (root / "to-home").symlink_to(tmp_path / "home")
    (tmp_path / "elsewhere").mkdir()
    job = in_docker(client, ["sh", "-c", "echo made > made.txt"], cwd=str(root / "project"), mount_cwd=True, cpu=0.1)
    assert job.wait(timeout=60).state == "succeeded", job.info.reason
    assert (root / "project" / "made.txt").read_text() == "made\n"
    for cwd, words in [(tmp_path / "elsewhere", "not under a folder jobs may mount"), (tmp_path, "controller's own"), ("/var/run", "controller's own"),
                       (tmp_path / "home", "controller's own"), (root / "to-home", "controller's own"),
                       (root / "missing", "not a folder")]:
        with pytest.raises(jobnest.PermissionDenied, match=rf"jobs\[0\]\.mount_cwd: .*{words}"):
            in_docker(client, ["true"], cwd=str(cwd), mount_cwd=True, cpu=0.1)
    # A folder swapped for a link to the home between the submit and the start is refused at the start.
    gate = in_docker(client, ["sleep", "2"], cpu=0.1)
    (root / "later").mkdir()
    late = in_docker(client, ["ls"], cwd=str(root / "later"), mount_cwd=True, cpu=0.1, when=gate.done)
    (root / "later").rmdir()
    (root / "later").symlink_to(tmp_path / "home")
    assert late.wait(timeout=60).state == "failed" and "controller's own" in late.info.reason
    assert len(list(client.list())) == 3


def test_exit_codes_and_cancel(docker_running: Running) -> None:
    client = docker_running.client()
    failed = in_docker(client, ["sh", "-c", "exit 3"]).wait(timeout=60)
    assert (failed.state, failed.exit_code) == ("failed", 3)
    sleeper = in_docker(client, ["sleep", "600"])
    wait_for(lambda: sleeper.state == "running", timeout=60)
    sleeper.cancel()
    sleeper.wait(timeout=30)
    assert sleeper.state == "cancelled"
    home = docker_running.controller.settings.home
    wait_for(lambda: not subprocess.run(["docker", "ps", "-aq", "--filter", f"label=jobnest.controller={home}"],
                                        capture_output=True, text=True).stdout.strip())


BUSY = ("timeout 2 sh -c 'while :; do :; done'; "
        "cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null || grep usage_usec /sys/fs/cgroup/cpu.stat")


def test_a_quarter_core_is_a_quarter_core(docker_running: Running) -> None:
    job = in_docker(docker_running.client(), ["sh", "-c", BUSY], cpu=0.25).wait(timeout=60)
    assert job.state == "succeeded", job.logs(stream="stderr")
    text = job.logs().split()
    seconds = int(text[-1]) / (1e6 if "usage_usec" in text else 1e9)
    assert 0.15 <= seconds / 2 <= 0.35, f"a 0.25 share used {seconds / 2:.2f} of a core"


def test_out_of_memory_fails_the_job_and_the_next_runs(docker_running: Running) -> None:
    client = docker_running.client()
    hog = in_docker(client, ["sh", "-c", "x=aaaaaaaa; while :; do x=$x$x; done"], memory="16Mi").wait(timeout=60)
    assert hog.state == "failed" and hog.info.reason == "out of memory"
    fine = in_docker(client, ["echo", "fine"], memory="16Mi").wait(timeout=60)
    assert fine.state == "succeeded" and fine.logs() == "fine\n"


def test_an_image_no_node_has_is_refused_and_nothing_stored(docker_running: Running) -> None:
    client = docker_running.client()
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.image: 'no-such-image:1' is on no docker node"):
        in_docker(client, ["true"], image="no-such-image:1")
    with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.image: required"):
        client.submit(["true"], executor="docker")
    with docker_running.store.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs_table)).scalar_one() == 0


def test_an_image_name_the_engine_refuses_is_the_job_s_fault_not_the_node_s(docker_running: Running) -> None:
    """Docker answers 400 to a malformed image name: the submit is refused naming the image,
    and the node stays up for everyone else (it was marked unreachable for 2 s)."""
    client = docker_running.client()
    executor = docker_running.controller.executors["docker"]
    for bad in ("Not A Valid:Name!!", "UPPER/case"):
        with pytest.raises(jobnest.InvalidSpec, match=r"jobs\[0\]\.image: .* the docker engine refuses"):
            in_docker(client, ["true"], image=bad)
        assert [node.name for node in executor.nodes()] == ["docker"]
    assert in_docker(client, ["true"]).wait(timeout=60).state == "succeeded"


def test_the_signature_names_image_content_not_its_tag(docker_running: Running, tmp_path: Path) -> None:
    tag = f"jobnest-test/retag:{os.getpid()}"
    other = tmp_path / "other"
    (other / "bin").mkdir(parents=True)
    (other / "bin" / "marker").write_text("different content\n")
    client = docker_running.client()
    try:
        subprocess.run(["docker", "tag", BUSYBOX, tag], check=True)
        first = in_docker(client, ["echo", "same"], image=tag).wait(timeout=60)
        assert in_docker(client, ["echo", "same"], image=tag).reused  # same content: reused
        changed = subprocess.run(f"tar -C {other} -c . | docker import --change 'LABEL jobnest.test=1' - {tag}-base",
                                 shell=True, capture_output=True, text=True, check=True)
        subprocess.run(f"printf 'FROM {tag}-base\\nCOPY --from={BUSYBOX} /bin /bin\\n' | docker build -q -t {tag} -",
                       shell=True, check=True, capture_output=True)
        assert changed.returncode == 0
        rerun = in_docker(client, ["echo", "same"], image=tag)
        assert not rerun.reused and rerun.info.run_uuid != first.info.run_uuid
        assert client.why(rerun.uuid)["differing"] == ["image"]
    finally:
        subprocess.run(["docker", "rmi", "-f", tag, f"{tag}-base"], capture_output=True)
        subprocess.run(["docker", "image", "prune", "-f", "--filter", "label=jobnest.test=1"], capture_output=True)


class Forwarder:
    """A unix socket forwarding to the Docker engine's: an endpoint the test can take away and
    bring back, while the engine itself keeps running."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def up(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.path))
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        assert self.listener is not None
        self.listener.close()
        self.path.unlink()
        for conn in self.conns:
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(self.target)
            self.conns += [client, engine]
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_an_unreachable_engine_leaves_jobs_queued_until_it_returns(tmp_path: Path) -> None:
    require_engine()
    endpoint = Forwarder(tmp_path / "engine.sock")
    endpoint.up()
    home = tmp_path / "home"
    controller = Controller(make_settings(home, docker=[f"unix://{endpoint.path}"]))
    controller.start()
    try:
        client = Running(controller).client()
        assert in_docker(client, ["echo", "up"]).wait(timeout=60).state == "succeeded"
        endpoint.down()
        waiting = in_docker(client, ["echo", "back"])
        wait_for(lambda: "unreachable" in client.get(waiting.uuid).reason, timeout=30)
        assert client.get(waiting.uuid).state == "queued"
        endpoint.up()
        waiting.wait(timeout=60)
        assert waiting.state == "succeeded" and waiting.logs() == "back\n"
    finally:
        controller.stop(grace=0)
        remove_containers(home)


@pytest.fixture(scope="session")
def second_engine() -> str:
    require_engine()
    script = Path(__file__).resolve().parent.parent / "scripts" / "dockerd-second.sh"
    return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout.split()[-1]


def test_runs_are_packed_onto_several_engines(tmp_path: Path, second_engine: str) -> None:
    home = tmp_path / "home"
    controller = Controller(make_settings(home, docker=[ENGINE, second_engine]))
    controller.start()
    try:
        client = Running(controller).client()
        cores = {n["name"]: n["cpu"] for n in client.status()["nodes"] if n["name"].startswith("docker")}
        assert set(cores) == {"docker-0", "docker-1"}
        with pytest.raises(jobnest.InvalidSpec, match="missing on docker node docker-1"):
            in_docker(client, ["true"], image=JOBNEST_IMAGE)  # loaded on the first engine only
        # as many one-core jobs as the two engines have cores, and one more, which must wait
        jobs = [in_docker(client, ["sleep", f"{3 + i / 100}"], cpu=1) for i in range(int(sum(cores.values())))]
        extra = in_docker(client, ["echo", "last"], cpu=1)
        wait_for(lambda: all(j.state == "running" for j in jobs), timeout=60)
        assert {j.info.node for j in jobs} == {"docker-0", "docker-1"}
        wait_for(lambda: client.get(extra.uuid).reason != "", timeout=20)  # planned, once the others were claimed
        assert extra.state == "queued" and extra.info.reason.startswith("waiting for cpu")
        extra.wait(timeout=60)
        assert extra.state == "succeeded" and extra.logs() == "last\n"
    finally:
        controller.stop(grace=0)
        remove_containers(home)
        subprocess.run(f"docker -H {second_engine} ps -aq --filter label=jobnest.controller={home} "
                       f"| xargs -r docker -H {second_engine} rm -f", shell=True, capture_output=True)


def test_a_runner_in_a_container_nests_containers(docker_running: Running) -> None:
    """`jobnest submit examples/pipeline.py --executor docker --image jobnest/jobnest`: the runner runs
    in a container from its uploaded folder, and so do its children and theirs."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "JOBNEST_CONTROLLER": docker_running.address, "JOBNEST_TOKEN": ADMIN}
    result = subprocess.run(
        [sys.executable, "-c", "from jobnest._cli import main; main()", "submit", "--wait", "--executor", "docker",
         "--image", JOBNEST_IMAGE, str(root / "examples" / "pipeline.py"), "runner"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 jobs: 6 ran, 0 reused" in result.stdout
    runner = result.stdout.split()[0]
    jobs = list(docker_running.client().list(subtree=runner))
    assert {j.executor for j in jobs} == {"docker"} and len(jobs) == 6
    by_uuid = {j.uuid: j for j in jobs}
    grandchildren = [j for j in jobs if j.name.startswith("call-chr")]
    assert all(by_uuid[by_uuid[g.spawned_by_job_uuid].spawned_by_job_uuid].uuid == runner for g in grandchildren)


def test_the_executor_is_chosen_per_job_per_block_or_by_the_controller(docker_running: Running, tmp_path: Path) -> None:
    client = docker_running.client()
    assert client.submit(["true"]).wait(timeout=60).info.executor == "local"  # the controller's default
    with client.defaults(executor="docker", image=BUSYBOX):
        assert client.submit(["true"]).wait(timeout=60).info.executor == "docker"
        assert client.submit(["true", "x"], executor="local").wait(timeout=60).info.executor == "local"
    home = tmp_path / "docker-first"
    settings = make_settings(home, docker=[ENGINE])
    settings.default_executor = "docker"
    controller = Controller(settings)
    controller.start()
    try:
        job = Running(controller).client().submit(["true"], image=BUSYBOX).wait(timeout=60)
        assert job.info.executor == "docker" and job.state == "succeeded"
    finally:
        controller.stop(grace=0)
        remove_containers(home)


def _left_made(tmp_path: Path, argv: list[str], make: bool = True, **create: Any) -> tuple[Any, Any, str, Any, Any]:
    """A docker run claimed (running) by a controller that died after making its container, and
    that container, made and not started (or, unless `make`, its create still under way: then a
    function that makes it): (store, reconciler, job, executor, container)."""
    import docker

    from jobnest_controller.data import Data
    from jobnest_controller.executors.docker import ATTEMPT_LABEL, CONTROLLER_LABEL, RUN_LABEL, DockerExecutor
    from jobnest_controller.programs import Programs
    from jobnest_controller.reconciler import Reconciler
    from jobnest_controller.states import State
    from jobnest_controller.store import Caller, Kind, Store

    from .test_store import ids, spec

    home = tmp_path / "home"
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    executor = DockerExecutor(str(home / "runs"), [ENGINE], controller_id=str(home))
    # The executor bind-mounts the controller's socket path into the container, and the engine
    # refuses a bind source that does not exist. `echo` never calls it, so a file of the test's own
    # stands in for the socket (no path of this machine's).
    jobs_sock = tmp_path / "jobs.sock"
    jobs_sock.touch()
    reconciler = Reconciler(store, {"docker": executor}, f"unix://{jobs_sock}", Programs(str(tmp_path / "p")),
                            Data(str(tmp_path / "d"), 2**20))
    image_id = executor.resolve_image(BUSYBOX)
    [job] = ids(store.submit(Caller("admin", "me"), "", [spec(*argv, executor="docker", image=BUSYBOX,
                                                              image_id=image_id)], 1.0))
    run = store.get_job(job)["run_uuid"]
    with store.write() as tx:
        store.transition(tx, Kind.RUN, run, State.QUEUED, State.RUNNING, "", node="docker",
                         workdir=executor.workdir(run))
    Path(executor.workdir(run), "out").mkdir(parents=True)  # as its start made it
    labels = {RUN_LABEL: run, CONTROLLER_LABEL: str(home), ATTEMPT_LABEL: "1"}
    made = lambda: docker.from_env().containers.create(BUSYBOX, argv, labels=labels, **create)  # noqa: E731
    return store, reconciler, job, executor, made() if make else made


def _tick_until_ended(store: Any, reconciler: Any, job: str) -> dict[str, Any]:
    from jobnest_controller.states import State

    deadline = time.monotonic() + 60
    while not State(store.get_job(job)["state"]).terminal and time.monotonic() < deadline:
        reconciler.tick(time.time())
        time.sleep(0.05)
    return dict(store.get_job(job))


def test_a_container_made_but_never_started_is_started_not_replaced(tmp_path: Path) -> None:
    """What a controller killed between creating a container and starting it leaves behind: it
    may have been starting it as it died, so a new container could run the job twice (the soak
    saw 10 of 1,152 jobs run twice). The one made is started, and only it runs."""
    require_engine()
    import docker

    from jobnest_controller.executors.docker import ATTEMPT_LABEL, CONTROLLER_LABEL, RUN_LABEL

    store, reconciler, job, executor, leftover = _left_made(tmp_path, ["echo", "made"])
    run = store.get_job(job)["run_uuid"]
    earlier = docker.from_env().containers.create(BUSYBOX, ["echo", "attempt 0"], labels={
        RUN_LABEL: run, CONTROLLER_LABEL: str(tmp_path / "home"), ATTEMPT_LABEL: "0"})
    try:
        row = _tick_until_ended(store, reconciler, job)
        assert row["state"] == "succeeded" and Path(executor.workdir(run), "stdout.log").read_text() == "made\n"
        assert {c.id for c in docker.from_env().containers.list(all=True, filters={"label": f"{RUN_LABEL}={run}"})
                } <= {leftover.id, earlier.id}  # no container was made anew
        earlier.reload()
        assert earlier.status == "created"  # another attempt's: left alone
        # It goes once its end is stored.
        wait_for(lambda: not docker.from_env().containers.list(all=True, filters={"id": leftover.id}))
    finally:
        remove_containers(tmp_path / "home")


@pytest.mark.parametrize("under_way", ["start", "create"])
def test_what_the_engine_finishes_after_a_restart_is_not_done_twice(tmp_path: Path, under_way: str) -> None:
    """The controller died while asking the engine to start the container, or to make it; the
    new one finds it made, or finds none, and the engine then carries the call out. Starting it
    again (`docker start` runs an exited container anew), or making another, would run it twice:
    the soak saw 2 of 1,212 jobs run twice, and 6 of 1,326 once the first was fixed."""
    require_engine()
    import docker

    ledger = tmp_path / "ledger"
    ledger.mkdir()
    store, reconciler, job, executor, made = _left_made(
        tmp_path, ["sh", "-c", "echo ran >> /ledger/runs"], make=under_way == "start",
        volumes={str(ledger): {"bind": "/ledger", "mode": "rw"}})
    try:
        reconciler.tick(time.time())  # sees it made and not started, or sees none
        if under_way == "create":
            made = made()
        made.start()  # what was under way
        made.wait()
        row = _tick_until_ended(store, reconciler, job)
        assert row["state"] == "succeeded"
        assert (ledger / "runs").read_text() == "ran\n"
        wait_for(lambda: not docker.from_env().containers.list(all=True, filters={"id": made.id}))  # once ended
    finally:
        remove_containers(tmp_path / "home")


def test_out_of_memory_retries_with_more_memory(docker_running: Running) -> None:
    client = docker_running.client()
    hog = 'x=$(head -c 40000000 /dev/zero | tr "\\0" a); echo ${#x}'  # about 40 MB in the shell
    job = in_docker(client, ["sh", "-c", hog], memory="24Mi", retries=1, memory_on_oom=8).wait(timeout=60)
    assert job.state == "succeeded" and job.logs().strip() == "40000000"
    assert client.get(job.uuid).memory == 24 * 2**20  # the job keeps what it asked for; its run got more


def test_the_local_executor_and_the_local_engine_share_this_machine_s_cores(tmp_path: Path) -> None:
    """Before, the local node and the local engine's node each offered every core: a 2-core
    machine ran 4 cores' worth of jobs, and `status` said each had room."""
    require_engine()
    cores = os.cpu_count() or 1
    home = tmp_path / "home"
    controller = Controller(make_settings(home, cpu=cores, docker=[ENGINE]))
    controller.start()
    try:
        client = Running(controller).client()
        busy = client.submit(["sleep", "30"], cpu=cores, name="all-cores")
        wait_for(lambda: client.get(busy.uuid).state == "running")
        boxed = client.submit(["true"], executor="docker", image=BUSYBOX, cpu=1, name="boxed")
        wait_for(lambda: client.get(boxed.uuid).reason.startswith("waiting for cpu"))
        assert client.get(boxed.uuid).state == "queued"
        used = {n["name"]: n["cpu_used"] for n in client.status()["nodes"]}
        assert set(used.values()) == {cores}, used  # each node counts what the other runs
        busy.cancel()
        assert boxed.wait(timeout=60).state == "succeeded"
    finally:
        controller.stop(grace=0)
        remove_containers(home)


def test_jobnest_run_mounts_its_folder_into_a_container_when_asked(docker_running: Running, tmp_path: Path) -> None:
    """Before, `jobnest run --executor docker` had no way to give the container its folder."""
    folder = tmp_path / "mounts" / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "raw.csv").write_text("a,b\n1,2\n")
    env = {**os.environ, "JOBNEST_CONTROLLER": docker_running.address, "JOBNEST_TOKEN": ADMIN}
    done = subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", "run", "--image", BUSYBOX,
                           "--mount-cwd", "--", "wc", "-l", "data/raw.csv"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["2", "data/raw.csv"], done
    [job] = docker_running.client().list()
    assert job.executor == "docker"  # an image and no executor: a container


def test_a_runner_in_a_container_writes_beside_its_program(docker_running: Running, tmp_path: Path) -> None:
    """Before, its folder was mounted read-only: `Read-only file system`, as a raw traceback."""
    program = tmp_path / "program" / "notes.py"
    program.parent.mkdir()
    program.write_text("from pathlib import Path\n"
                       "Path('scratch.txt').write_text('kept beside me')\n"
                       "print(Path('scratch.txt').read_text())\n")
    client = docker_running.client()
    job = client.submit_program(program, executor="docker", image=JOBNEST_IMAGE, cpu=0.1)
    assert job.wait(timeout=120).state == "succeeded", job.logs(stream="stderr")
    assert job.logs() == "kept beside me\n"


def _push(registry: str, source: str, name: str) -> str:
    """Push the local image `source` as `registry/name`, leave no local tag of it; returns its digest."""
    target = f"{registry}/{name}"
    subprocess.run(["docker", "tag", source, target], check=True, capture_output=True)
    pushed = subprocess.run(["docker", "push", target], check=True, capture_output=True, text=True).stdout
    digest = next(word for word in pushed.split() if word.startswith("sha256:"))
    subprocess.run(["docker", "rmi", target], check=True, capture_output=True)
    subprocess.run(["docker", "rmi", f"{target.rsplit(':', 1)[0]}@{digest}"], capture_output=True)  # a pull's
    return digest


def _image_of(running: Running, job: jobnest.Job) -> str:
    """The image the job's run ran, as the controller recorded it."""
    with running.store.engine.connect() as conn:
        spec = conn.execute(sa.select(runs_table.c.spec).where(runs_table.c.uuid == job.info.run_uuid)).scalar_one()
    return json.loads(spec)["image_id"]


def test_an_image_no_node_has_is_pulled_from_its_registry_by_digest(docker_running: Running, registry: str,
                                                                    tmp_path: Path) -> None:
    client = docker_running.client()
    digest = _push(registry, BUSYBOX, "jobnest/pulled:1")
    job = in_docker(client, ["echo", "pulled"], image=f"{registry}/jobnest/pulled:1", cpu=0.1).wait(timeout=120)
    assert job.state == "succeeded" and job.logs() == "pulled\n", job.info.reason
    assert _image_of(docker_running, job) == f"{registry}/jobnest/pulled@{digest}"  # the digest it ran
    again = in_docker(client, ["echo", "pulled"], image=f"{registry}/jobnest/pulled:1", cpu=0.1).wait(timeout=60)
    assert again.reused  # pulled now, it means the same content
    # The tag moves to other content in the registry: the same spec is not that run any more.
    (tmp_path / "Dockerfile").write_text(f"FROM {BUSYBOX}\nLABEL jobnest.test=retagged\n")
    subprocess.run(["docker", "build", "-q", "-t", "jobnest-test/retagged", str(tmp_path)], check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    moved = _push(registry, "jobnest-test/retagged", "jobnest/pulled:1")
    retagged = in_docker(client, ["echo", "pulled"], image=f"{registry}/jobnest/pulled:1", cpu=0.1).wait(timeout=120)
    assert retagged.state == "succeeded" and not retagged.reused
    assert moved != digest and _image_of(docker_running, retagged) == f"{registry}/jobnest/pulled@{moved}"
    assert client.why(retagged.uuid)["differing"] == ["image"]
    for image in ("jobnest-test/retagged", *(f"{registry}/jobnest/pulled@{d}" for d in (digest, moved))):
        subprocess.run(["docker", "rmi", image], capture_output=True)  # what this test pulled and built


def test_an_image_its_registry_lacks_is_refused_and_nothing_stored(docker_running: Running, registry: str) -> None:
    client = docker_running.client()
    try:
        in_docker(client, ["true"], image=f"{registry}/jobnest/never-pushed:1")
    except jobnest.InvalidSpec as e:
        assert e.field == "jobs[0].image" and "is on no docker node, and its registry says" in str(e), e
        assert "manifest unknown" in str(e)
    else:
        raise AssertionError("an image nobody has was accepted")
    assert list(client.list()) == []
