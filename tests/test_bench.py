"""``ci/bench --quick`` runs, writes its table and chart, and leaves nothing behind; the
isolation figures' arithmetic is checked on made-up sessions.

No timing is asserted: the machine running the suite may be busy, and what the numbers
say is the bench's report (issues 6 and 11), not a pass/fail of the suite. This test keeps
the bench from rotting as the runtime changes under it.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.isolate import Extra, Session  # noqa: E402
RUNTIMES = ("nsbox", "crun", "runc", "bwrap", "unshare")
FIGURES = ("lifecycle: nsbox / crun", "`run(['true'])` in a live box",
           "overhead per sandboxed test", "warm pool", "`pytest -n 2` throughput",
           "start time, ", "PSS per idle box", "`network='private'` box lifecycle",
           "Containerfile rebuild", "session with no boxes")
# Issue 11's rows, one per suite each; the quick bench's suites have 20 tests.
ISOLATE_ROWS = tuple(f"{who}: extra cost per test (20 {suite})"
                     for who in ("`--nsbox-isolate`", "pytest-forked `--forked`")
                     for suite in ("trivial tests", "tests with `tmp_path` and a session fixture"))


def _leftovers(tag: str) -> list[str]:
    found = [p for p in (f"/dev/shm/{tag}", f"/run/{tag}", f"/var/tmp/{tag}")
             if os.path.lexists(p)]
    for top, dirs, _files in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if d == tag or d.startswith(tag + "-")]
        if top.count("/") >= 4:
            dirs[:] = []
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(os.geteuid() != 0, reason="ci/bench needs root")
def test_quick_bench_writes_table_and_chart(tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(tmp_path, "bench-results")
    proc = subprocess.run([os.path.join(REPO, "ci", "bench"), "--quick", "--out", out],
                          cwd=REPO, capture_output=True, text=True, timeout=580, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"

    with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        table = f.read()
    assert table.strip() in proc.stdout, "the table is printed too"
    rows = re.findall(r"^\| (\w+)[ |]", table.split("## Figures")[0], re.MULTILINE)
    assert [r for r in rows if r in RUNTIMES] == list(RUNTIMES)
    nsbox_row = next(line for line in table.splitlines() if line.startswith("| nsbox |"))
    assert re.match(r"\| nsbox \| [\d.]+ \| [\d.]+ \|", nsbox_row), nsbox_row
    for figure in FIGURES:
        assert f"| {figure}" in table, f"figure {figure!r} missing from the table"
    assert "failed:" not in table
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines()
            if line.startswith("| ")}
    importlib.invalidate_caches()  # ci/bench may have installed pytest-forked just now
    forked = importlib.util.find_spec("pytest_forked") is not None
    for name in ISOLATE_ROWS:
        assert name in rows, f"figure {name!r} missing from the table"
        measured = re.match(r"\| [^|]+ \| -?[\d.]+ ms \(one round of ", rows[name])
        if name.startswith("pytest-forked") and not forked:
            assert "not available: pytest-forked is not installed" in rows[name]
        else:
            assert measured, rows[name]
    for name in ISOLATE_ROWS[:2]:
        assert rows[name].endswith("| ≤ 20 ms | yes |") or rows[name].endswith(
            "| ≤ 20 ms | **no** |"), rows[name]
    assert "## Where nsbox's lifecycle time goes" in table

    with open(os.path.join(out, "chart.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    tag = re.search(r"workspace (nsbox-bench-\d+)", proc.stderr)
    assert tag, proc.stderr[-2000:]
    assert _leftovers(tag.group(1)) == []


def _session(mode: str, seconds: float, per_test: dict[str, float],
             ids: tuple[str, ...] = (), to_first: float = 0.5) -> Session:
    return Session(mode, seconds, per_test, to_first, 0.1, ids)


def test_isolation_extra_is_the_median_over_rounds_of_whole_session_differences() -> None:
    """Issue 11 item 8 and the bench brief: the extra cost per test is (t_isolated -
    t_plain) / N of whole sessions, paired round by round, its median over rounds; the
    per-test distribution pairs each test's ``logstart``->``logfinish`` (pytest's
    ``_pytest/runner.py`` ``pytest_runtest_protocol`` logs both around the protocol) with
    the same test's in the plain session of that round."""
    n = 4
    plain = [_session("plain", s, {f"t[{i}]": 1.0 for i in range(n)}, (f"p{s}",) * n)
             for s in (1.0, 1.2, 1.1)]
    # rounds: +0.4 s, +4.0 s (a hiccup), +0.6 s over plain; each test 90 ms more inside
    # the protocol in every round, the rest (outside) 0.04 s, 3.64 s, 0.24 s, of which
    # 0.03 s before the first test.
    isolated = [_session("isolated", p.seconds + extra, {k: 91.0 for k in p.per_test_ms},
                         tuple(f"s{r}-{i}" for i in range(n)), to_first=0.53)
                for r, (p, extra) in enumerate(zip(plain, (0.4, 4.0, 0.6)))]
    e = Extra.of(isolated, plain, n)
    assert e.rounds_ms == pytest.approx([100.0, 1000.0, 150.0])
    assert e.median_ms == pytest.approx(150.0)  # the hiccup round does not move it
    assert e.per_test is not None and e.per_test.n == 3 * n
    assert e.per_test.median == pytest.approx(90.0)
    assert e.outside_s == pytest.approx([0.04, 3.64, 0.24])
    assert e.startup_s == pytest.approx([0.03, 0.03, 0.03])
    assert (e.mode_s, e.plain_s) == pytest.approx((1.7, 1.1))
    assert e.setups == (n, 3 * n)
    assert e.setups_text() == "4 per session (12 of 12 tests reported its id)"
    assert Extra.of(plain, plain, n).setups_text() == (
        "1 per session (12 of 12 tests reported its id)")


def test_isolation_extra_without_per_test_timestamps_or_fixture_ids() -> None:
    """A mode whose outer process logged no ``logstart``/``logfinish`` (or whose reports
    lost ``user_properties``, as JUnit-XML round trips do) still gets its whole-session
    figure; the parts it cannot support are None, and the text says why."""
    plain = [_session("plain", 1.0, {"t[0]": 1.0, "t[1]": 1.0})]
    isolated = [_session("isolated", 2.0, {})]
    e = Extra.of(isolated, plain, 2)
    assert e.rounds_ms == pytest.approx([500.0])
    assert e.per_test is None
    assert e.outside_s == []
    assert e.startup_s == pytest.approx([0.0])
    assert e.setups is None
    assert "no test reported the session fixture's id back" in e.setups_text()
    with pytest.raises(ValueError, match="2 sessions of the mode against 1 plain"):
        Extra.of(isolated * 2, plain, 2)
