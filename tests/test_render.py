"""The tree and table renderers are pure: fixed jobs in, exact text out."""

from jobnest import JobInfo
from jobnest._render import summary, table, tree


def info(uuid: str, name: str, parent: str = "", state: str = "succeeded", reused: bool = False,
         origin: str = "", cpu: float = 0.25, started: float | None = 100.0, finished: float | None = 102.5,
         reason: str = "") -> JobInfo:
    return JobInfo(uuid=uuid * 8, name=name, state=state, reason=reason, owner="me",
                   spawned_by_job_uuid=parent * 8 if parent else "", run_uuid=(origin or uuid) * 8 + "r",
                   reused=reused, run_origin_job_uuid=(origin or uuid) * 8, exit_code=0, cpu=cpu, memory=0,
                   created_at=90.0, started_at=started, finished_at=finished, node="local", executor="local",
                   cpu_enforced=True, output="", output_dir="")


FIRST = [
    info("a", "driver", cpu=0, state="running", finished=None),
    info("b", "runner", "a", cpu=0.1),
    info("c", "align", "b"),
    info("d", "sub", "b", state="failed", reason="exit code 2"),
    info("e", "leaf", "d", state="queued", started=None, finished=None, reason="waiting for cpu"),
]


def test_tree_draws_levels_icons_and_columns() -> None:
    assert tree(FIRST, "a" * 8, now=110.0) == "\n".join([
        "STEP          ID          CPU  DURATION  MESSAGE",
        "● driver      aaaaaaaa      -       10s",
        "└─✔ runner    bbbbbbbb    0.1      2.5s",
        "  ├─✔ align   cccccccc   0.25      2.5s",
        "  └─✖ sub     dddddddd   0.25      2.5s  exit code 2",
        "    └─◷ leaf  eeeeeeee   0.25         -  waiting for cpu",
    ])
    # Before, "5 jobs: 5 ran, 0 reused": the running driver and the queued leaf counted as ran.
    assert summary(FIRST, "a" * 8) == "5 jobs: 3 ran (1 failed), 0 reused, 1 running, 1 queued"


def test_a_reused_job_shows_the_work_it_stands_for() -> None:
    second = [info("f", "driver", cpu=0, state="running", finished=None), info("g", "runner", "f", reused=True, origin="b", cpu=0.1)]
    text = tree(FIRST[1:] + second, "f" * 8, now=110.0)
    assert "└─✔ runner    gggggggg    0.1      2.5s  ♻ reused run bbbbbbbb of job bbbbbbbb" in text
    assert "  ├─✔ align   cccccccc   0.25      2.5s  ♻ (reused)" in text
    assert summary(FIRST[1:] + second, "f" * 8) == "5 jobs: 0 ran, 4 reused, 1 running"


def test_the_summary_counts_what_ended_apart_from_what_is_live() -> None:
    done = [info("a", "driver", cpu=0), info("b", "align", "a"), info("c", "merge", "a", state="cancelled",
                                                                       started=None, finished=None)]
    assert summary(done, "a" * 8) == "3 jobs: 2 ran, 0 reused, 1 cancelled"


def test_table() -> None:
    assert table(FIRST[:2], now=110.0).splitlines() == [
        "ID        STATE      NAME                        CPU  DURATION  PARENT",
        "aaaaaaaa  running    driver                        -       10s  -",
        "bbbbbbbb  succeeded  runner                      0.1      2.5s  aaaaaaaa",
    ]


def test_watch_counts_each_state_and_fits_a_tall_tree_to_the_terminal() -> None:
    from jobnest._render import screen

    assert screen(FIRST, "a" * 8, now=110.0).splitlines()[0] == "◷ 1 queued   ● 1 running   ✔ 2 succeeded   ✖ 1 failed"
    tall = [info("a", "driver", cpu=0, state="running", finished=None)] + [
        info(chr(ord("b") + i), f"step-{i}", "a") for i in range(20)]
    lines = screen(tall, "a" * 8, height=10, now=110.0).splitlines()
    assert len(lines) == 10 and lines[0] == "● 1 running   ✔ 20 succeeded"
    assert lines[1].startswith("STEP") and lines[2].startswith("● driver")  # the top stays
    assert lines[-2] == "… 15 more (jobnest tree aaaaaaaa shows all)"
    assert lines[-1] == "21 jobs: 20 ran, 0 reused, 1 running"
    assert len(screen(tall, "a" * 8, now=110.0).splitlines()) == 24  # not a terminal: all of it
