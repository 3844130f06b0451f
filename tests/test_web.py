"""The web monitor, served by a real `jobnest web` process against a real controller, driven in
Debian's Chromium through Playwright. Screenshots of the main views go to build/screenshots."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

import jobnest

from .conftest import ADMIN, Running, wait_for

CHROMIUM = "/usr/bin/chromium"
# As the machine needs: no sandbox as root, and no calls out of a closed network.
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"


class Web:
    """A `jobnest web` process for the controller `running` (anything with its `address`), and
    the monitor's address."""

    def __init__(self, running: Any, token: str, *flags: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from jobnest._cli import main; main()", "--controller", running.address,
             "--token", token, "web", "--port", "0", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("JOBNEST_")})
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"serving (http://\S+)/", line)
        if not match:
            self.process.kill()
            raise AssertionError(f"jobnest web did not start: {line}{self.process.stderr.read()}")  # type: ignore[union-attr]
        self.url = match.group(1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def web(running: Running) -> Iterator[Web]:
    w = Web(running, ADMIN)
    yield w
    w.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def row(page: Page, uuid: str) -> Any:
    return page.locator(f'li.job[data-uuid="{uuid}"] > .line').first


def gate(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A file to create, and a shell line that waits for it."""
    path = tmp_path / name
    return path, f"while [ ! -e {path} ]; do sleep 0.05; done"


def test_the_tree_shows_the_roots_and_updates_live_as_a_job_ends(running: Running, web: Web, page: Page,
                                                                  tmp_path: Path) -> None:
    client = running.client()
    go, wait = gate(tmp_path, "go")
    job = client.submit(["sh", "-c", wait], cpu=0.1, name="slow-step")
    wait_for(lambda: job.state == "running")
    page.goto(web.url)
    expect(row(page, job.uuid)).to_contain_text("running")
    expect(row(page, job.uuid)).to_contain_text("slow-step")
    page.evaluate("window.notReloaded = true")
    go.touch()
    expect(row(page, job.uuid)).to_contain_text("succeeded")
    newer = client.submit(["true"], cpu=0.1, name="newer-root")  # a new root shows up on its own too
    expect(row(page, newer.uuid)).to_contain_text("newer-root")
    assert page.evaluate("window.notReloaded") is True
    names = page.locator("ul#tree > li.job > .line .name").all_inner_texts()
    assert names.index("newer-root") < names.index("slow-step")  # newest first
    shot(page, "tree")


def runner_with_children(client: jobnest.Client, tmp_path: Path) -> jobnest.Job:
    runner = tmp_path / "runner.py"
    runner.write_text("import jobnest\nc = jobnest.connect()\nc.submit(['sleep', '60'], cpu=0.1, name='left')\n"
                      "c.submit(['sleep', '61'], cpu=0.1, name='right').wait()\n")
    top = client.submit([sys.executable, str(runner)], cpu=0.1, name="runner")
    wait_for(lambda: len(top.children()) == 2 and all(c.state == "running" for c in top.children()))
    return top


def test_a_cancel_click_asks_first_then_cancels_the_subtree(running: Running, web: Web, page: Page,
                                                            tmp_path: Path) -> None:
    client = running.client()
    top = runner_with_children(client, tmp_path)
    page.goto(f"{web.url}/job/{top.uuid}")
    expect(page.locator(".children li.job")).to_have_count(3)  # the runner, opened, and its two children
    page.click("button.cancel")
    expect(page.locator("dialog.confirm")).to_contain_text("and the 2 jobs below it")
    page.click("dialog.confirm button.no")
    time.sleep(0.5)
    assert top.state == "running"
    page.click("button.cancel")
    page.click("dialog.confirm button.yes")
    expect(page.locator("#flash")).to_have_text("cancelled 3 jobs")
    for job in [top, *top.children()]:
        job.wait(timeout=20)
        assert job.state == "cancelled"
    expect(page.locator("#state")).to_have_text("cancelled")  # live, without a reload
    expect(page.locator(".children li.job .line.s-cancelled")).to_have_count(3)
    shot(page, "job-cancelled")


def test_logs_show_the_tail_and_follow_a_running_job(running: Running, web: Web, page: Page, tmp_path: Path) -> None:
    client = running.client()
    go, wait = gate(tmp_path, "go")
    job = client.submit(["sh", "-c", f"echo first line; {wait}; echo second line; echo oops >&2"], cpu=0.1)
    wait_for(lambda: job.state == "running")
    page.goto(f"{web.url}/job/{job.uuid}")
    expect(page.locator("#log")).to_have_text("first line\n")
    go.touch()
    expect(page.locator("#log")).to_have_text("first line\nsecond line\n")
    expect(page.locator("#state")).to_have_text("succeeded")
    page.click('.tabs button[data-stream="stderr"]')
    expect(page.locator("#log")).to_have_text("oops\n")
    page.reload()  # a finished job's log reads the same
    expect(page.locator("#log")).to_have_text("first line\nsecond line\n")


def test_a_long_log_is_paged_from_its_tail(running: Running, web: Web, page: Page) -> None:
    client = running.client()
    job = client.submit(["sh", "-c", "seq 1 30000"], cpu=0.1).wait(timeout=30)  # 168,894 bytes
    page.goto(f"{web.url}/job/{job.uuid}")
    expect(page.locator("#log")).to_contain_text("29999\n30000\n")
    text = page.locator("#log").text_content() or ""
    assert len(text) == 64 * 1024 and "\n1\n2\n" not in text
    for _ in range(2):
        page.click("button.earlier")
    expect(page.locator("button.earlier")).to_be_hidden()
    assert (page.locator("#log").text_content() or "").startswith("1\n2\n3\n")


def test_the_why_panel_names_the_part_that_differed(running: Running, web: Web, page: Page) -> None:
    client = running.client()
    client.submit(["echo", "a"], name="step").wait(timeout=20)
    reused = client.submit(["echo", "a"], name="step").wait(timeout=20)
    changed = client.submit(["echo", "b"], name="step").wait(timeout=20)
    page.goto(f"{web.url}/job/{changed.uuid}")
    expect(page.locator("#why h2")).to_have_text("Why: ran")
    expect(page.locator("#why tr.differs")).to_have_count(1)
    expect(page.locator("#why tr.differs td").first).to_have_text("argv")
    shot(page, "job-why")
    page.goto(f"{web.url}/job/{reused.uuid}")
    expect(page.locator("#why h2")).to_have_text("Why: reused")


def test_retry_runs_a_failed_job_again_and_invalidate_stops_reuse(running: Running, web: Web, page: Page,
                                                                   tmp_path: Path) -> None:
    client = running.client()
    flag = tmp_path / "ok"
    failed = client.submit(["sh", "-c", f"test -e {flag}"], cpu=0.1, name="flaky").wait(timeout=20)
    assert failed.state == "failed"
    flag.touch()
    page.goto(f"{web.url}/job/{failed.uuid}")
    page.click("button.retry")
    page.click("dialog.confirm button.yes")
    page.wait_for_url(re.compile(r"/job/(?!" + failed.uuid + ")"))
    again = client.job(page.url.rsplit("/", 1)[1])
    again.wait(timeout=20)
    assert again.state == "succeeded" and again.info.argv == failed.info.argv and again.name == "flaky"
    expect(page.locator("#state")).to_have_text("succeeded")
    page.click("button.invalidate")
    page.click("dialog.confirm button.yes")
    expect(page.locator("#flash")).to_contain_text("invalidated")
    rerun = client.submit(["sh", "-c", f"test -e {flag}"], cpu=0.1, name="flaky")
    assert client.why(rerun.uuid)["reused"] is False


def test_the_dependency_picture_draws_inputs_and_conditions(running: Running, web: Web, page: Page) -> None:
    driver = running.client(driver=True)
    with driver.batch() as batch:
        make = batch.submit(["sh", "-c", "echo data > {output}/x"], cpu=0.1, name="make")
        batch.submit(["cat", "{inputs.x}/x"], cpu=0.1, name="read", inputs={"x": make})
        batch.submit(["true"], cpu=0.1, name="after", when=make.succeeded)
    make.wait(timeout=20)
    top = driver.driver
    assert top is not None
    page.goto(f"{web.url}/job/{top.uuid}")
    expect(page.locator("svg.graph g.node")).to_have_count(3)
    expect(page.locator("svg.graph path.edge.input")).to_have_count(1)
    expect(page.locator("svg.graph path.edge.when")).to_have_count(1)
    expect(page.locator(f'svg.graph g.node[data-uuid="{make.uuid}"]')).to_have_class("node s-succeeded")
    shot(page, "job-graph")
    driver.close()


def test_an_output_is_listed_and_downloads(running: Running, web: Web, page: Page) -> None:
    client = running.client()
    job = client.submit(["sh", "-c", "mkdir {output}/d; printf 'hello web' > {output}/d/note.txt"], cpu=0.1).wait(
        timeout=20)
    page.goto(f"{web.url}/job/{job.uuid}")
    page.click("#output button.files")
    link = page.locator('#output a[href*="note.txt"]')
    expect(link).to_have_text("d/note.txt")
    with page.expect_download() as download:
        link.click()
    assert Path(download.value.path()).read_bytes() == b"hello web"


def test_a_tree_of_10000_jobs_pages_its_children(running: Running, web: Web, page: Page) -> None:
    driver = running.client(driver=True)
    blocker = driver.submit(["sleep", "300"], cpu=0.1, name="blocker")
    specs = [driver.spec(["true"], cpu=0.1, name=f"sample-{i}", when=blocker.succeeded) for i in range(9_999)]
    driver.submit_many(specs)
    top = driver.driver
    assert top is not None
    page.goto(web.url)
    line = row(page, top.uuid)
    expect(line).to_contain_text("10000 children")
    expect(line.locator(".count.s-queued")).to_have_text("◷9999")
    assert page.locator("li.job").count() == 1  # collapsed: the children are not drawn
    line.locator("button.toggle").click()
    expect(page.locator("ul.children > li.job")).to_have_count(100)
    more = page.locator("ul.children > li.more button")
    expect(more).to_have_text("show 100 more of 9900 left")
    more.click()
    expect(page.locator("ul.children > li.job")).to_have_count(200)
    expect(page.locator("ul.children > li.job .name").nth(199)).to_have_text("sample-198")
    shot(page, "tree-10000")
    blocker.cancel()  # the controller then cancels its dependents, a chunk at a time: the counts follow live
    expect(line.locator(".count.s-cancelled")).to_have_text(re.compile(r"⊘[1-9][0-9]*"))
    driver.close()


def sse(url: str, cookie: str, last: str | None = None, seconds: float = 3.0) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) of what an event stream sends within `seconds`."""
    headers = {"Cookie": cookie, **({"Last-Event-ID": last} if last else {})}
    events, fields = [], {}
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=seconds) as response:
        try:
            while time.monotonic() < deadline:
                line = response.readline().decode().rstrip("\r\n")
                if not line and fields:
                    events.append((fields.get("event", ""), fields.get("id", ""), json.loads(fields.get("data", "{}"))))
                    fields = {}
                elif line and not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    fields[key] = value
        except TimeoutError:
            pass
    return events


def session_cookie(web: Web) -> str:
    with urllib.request.urlopen(web.url) as response:
        return response.headers["Set-Cookie"].split(";")[0]


def test_events_coalesce_a_burst_and_resume_from_the_last_one_seen(running: Running, web: Web) -> None:
    driver = running.client(driver=True)
    blocker = driver.submit(["sleep", "300"], cpu=0.1, name="blocker")
    top = driver.driver
    assert top is not None
    cookie = session_cookie(web)
    url = f"{web.url}/events?tops={top.uuid}&open={top.uuid}"
    before = sse(url, cookie, seconds=1)[-1][1]  # the tree is listed and watched from now on
    seen: list[Any] = []
    listener = threading.Thread(target=lambda: seen.extend(sse(url, cookie, last=before, seconds=4)))
    listener.start()
    time.sleep(1)
    burst = driver.submit_many([driver.spec(["true"], cpu=0.1, when=blocker.succeeded) for _ in range(1000)])
    listener.join()
    updates = [e for e in seen if e[0] == "update"]
    assert 1 <= len(updates) <= 2, [len(e[2]["rows"]) for e in updates]  # a thousand changes, not a thousand updates
    rows = {r["uuid"]: r for e in updates for r in e[2]["rows"]}
    assert set(rows) - {blocker.uuid} == {top.uuid, *(j.uuid for j in burst)}  # the blocker's times, exact now
    assert rows[top.uuid]["children"] == 1001 and rows[top.uuid]["counts"] == {"queued": 1000, "running": 1}
    last = updates[-1][1]
    assert [e for e in sse(url, cookie, last=last, seconds=1.5) if e[0] == "update"] == []  # nothing since
    resumed = [e for e in sse(url, cookie, last=before, seconds=1.5) if e[0] == "update"]
    assert {r["uuid"] for e in resumed for r in e[2]["rows"]} >= set(rows) - {blocker.uuid}  # what changed since
    assert sse(url, cookie, last="999999", seconds=1.5)[0][0] == "snapshot"  # unknown: start again
    blocker.cancel()
    driver.close()


def test_a_user_token_sees_only_its_own_jobs_and_actions_need_the_csrf_token(running: Running, browser: Browser
                                                                             ) -> None:
    admin = running.client()
    alice, bob = admin.create_token("alice"), admin.create_token("bob")
    hers = running.client(alice).submit(["sleep", "60"], cpu=0.1, name="alices-job")
    his = running.client(bob).submit(["sleep", "60"], cpu=0.1, name="bobs-job")
    w = Web(running, "", "--login")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(w.url)
        expect(page).to_have_url(re.compile("/login"))
        page.fill("input[name=token]", "not-a-token-at-all")
        page.click("form.login button")
        expect(page.locator("#error")).to_be_visible()
        page.fill("input[name=token]", bob)
        page.click("form.login button")
        expect(row(page, his.uuid)).to_contain_text("bobs-job")
        expect(page.locator("ul#tree > li.job")).to_have_count(1)
        page.goto(f"{w.url}/job/{hers.uuid}")
        expect(page.locator("#missing")).to_be_visible()
        assert "alices-job" not in page.content()
        response = page.request.get(f"{w.url}/api/jobs/{hers.uuid}/children")
        assert response.status in (403, 404)
        forged = page.request.post(f"{w.url}/api/jobs/{his.uuid}/cancel")  # no CSRF header, as another site's form
        assert forged.status == 403 and his.state == "running"
        bare = urllib.request.Request(f"{w.url}/api/jobs")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare)
        assert refused.value.code == 401
        cookie = next(c for c in context.cookies() if c["name"] == "jobnest_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        context.close()
        w.stop()
        hers.cancel()
        his.cancel()


def test_a_job_token_sees_its_own_subtree_and_nothing_else(running: Running, browser: Browser,
                                                            tmp_path: Path) -> None:
    client = running.client()
    token_file = tmp_path / "token"
    middle = tmp_path / "middle.py"  # a job under a job: no root is in its sight
    middle.write_text("import os, time, jobnest\nc = jobnest.connect()\n"
                      "c.submit(['sleep', '60'], cpu=0.1, name='its-child')\n"
                      f"open({str(token_file)!r}, 'w').write(os.environ['JOBNEST_TOKEN'])\ntime.sleep(60)\n")
    runner = tmp_path / "runner.py"
    runner.write_text("import sys, jobnest\nc = jobnest.connect()\n"
                      f"c.submit([sys.executable, {str(middle)!r}], cpu=0.1, name='the-middle').wait()\n")
    top = client.submit([sys.executable, str(runner)], cpu=0.1, name="the-runner")
    wait_for(lambda: token_file.exists() and token_file.read_text())
    mid = next(c for c in top.children() if c.name == "the-middle")
    w = Web(running, token_file.read_text(), "--no-login")
    page = browser.new_page()
    try:
        page.goto(w.url)
        expect(row(page, mid.uuid)).to_contain_text("the-middle")
        row(page, mid.uuid).locator("button.toggle").click()
        expect(page.locator("ul.children > li.job .name")).to_have_text(["its-child"])
        assert "the-runner" not in page.content()
        page.goto(f"{w.url}/job/{top.uuid}")
        expect(page.locator("#missing")).to_be_visible()
    finally:
        page.close()
        w.stop()
        top.cancel()


def test_on_another_address_the_monitor_does_not_start_without_login(running: Running) -> None:
    result = subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", "--controller",
                             running.address, "web", "--host", "0.0.0.0", "--no-login"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "log in" in result.stderr


def test_a_page_named_by_another_host_is_refused_on_loopback(web: Web) -> None:
    """No other site can reach the monitor by pointing its own name at 127.0.0.1 (DNS rebinding)."""
    request = urllib.request.Request(web.url, headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 421
    with urllib.request.urlopen(f"{web.url}/healthz") as response:
        assert response.read() == b"ok"


def test_on_the_local_default_a_page_starts_the_idle_controller_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JOBNEST_")},
           "JOBNEST_HOME": str(home), "JOBNEST_LOCAL_IDLE_TIMEOUT": "1"}
    process = subprocess.Popen([sys.executable, "-c", "from jobnest._cli import main; main()", "web", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = re.search(r"serving (http://\S+)/", process.stdout.readline()).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(url) as response:
            cookie = response.headers["Set-Cookie"].split(";")[0]
        wait_for(lambda: not jobnest._client.local_controller_healthy(home / "controller.sock"), timeout=30)
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie})) as response:
            assert response.status == 200
        with urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs", headers={"Cookie": cookie})) as response:
            assert json.load(response)["jobs"] == []
    finally:
        process.terminate()
        process.wait(10)
        subprocess.run([sys.executable, "-c", "from jobnest._cli import main; main()", "down"], env=env,
                       capture_output=True, timeout=30)


@pytest.mark.parametrize(("query", "field", "problem"), [
    ("state=bogus", "state", "unknown state 'bogus'"), ("since=3x", "since", "not a duration"),
    ("offset=-1", "offset", "must be from 0"), ("limit=abc", "limit", "whole number")])
def test_bad_filters_are_refused_naming_the_parameter(web: Web, query: str, field: str, problem: str) -> None:
    request = urllib.request.Request(f"{web.url}/api/jobs?{query}", headers={"Cookie": session_cookie(web)})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    body = json.load(refused.value)
    assert refused.value.code == 400 and body["field"] == field and problem in body["error"], body
