"""``--nsbox-stats`` pictures: each box's cgroup sampled over time (``Sampler``, a bounded
``Series``), the series carried on the teardown report through pytest-xdist, the page's
per-test charts (memory against its limit, CPU, OOM kills) and pytest-html's extras,
checked in a real headless Chromium.

References: pytest ``_pytest/reports.py`` ``_report_to_json`` (a report's extra attributes
are serialized) and ``TestReport.__init__(**extra)`` (and restored); pytest-xdist
``xdist/remote.py`` ``WorkerInteractor.pytest_runtest_logreport`` (a worker ships each
logged report); pytest-html ``basereport.py`` ``_process_extras`` and
``resources/app.js`` (an ``html`` extra is inserted into the test's ``.extraHTML``) and
``extras.html``; the kernel's cgroup docs (v1 ``memory.usage_in_bytes``, ``cpuacct.usage``,
``memory.oom_control`` ``oom_kill``; v2 ``memory.current``, ``cpu.stat``,
``memory.events``), which ``Stats`` reads; SVG 1.1 (``polyline``, ``line``); the PNG
specification (chunks, zlib stream, per-row filters 0-4) for reading Chromium's
screenshot.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_nsbox.cgroups.base import Stats
from pytest_nsbox.errors import CgroupError
from pytest_nsbox.teststats import (PALETTE, SERIES_ATTR, Collector, Sampler, Series,
                                    html_page, report_series, timeline_chart)

ARGS = ("-p", "no:cacheprovider")
MIB = 1024 ** 2
SVG = "{http://www.w3.org/2000/svg}"
HOG = "head -c {n} /dev/zero | tail | wc -c"

# -- a source of readings that needs no cgroup -------------------------------------------------


class Script:
    """``stats()`` from a function of the call number (0, 1, ...); ``fail_at`` raises a
    ``CgroupError`` from that call on, as a removed cgroup's files do."""

    def __init__(self, reading, fail_at: int | None = None) -> None:
        self.reading = reading
        self.fail_at = fail_at
        self.calls = 0
        self.closed = False

    def stats(self) -> Stats:
        n = self.calls
        self.calls += 1
        if self.fail_at is not None and n >= self.fail_at:
            raise CgroupError("cgroup: read /sys/fs/cgroup/memory/nsbox-x: gone")
        memory, cpu, oom = self.reading(n)
        return Stats(memory_current=memory, memory_peak=None, memory_limit=64 * MIB,
                     cpu_seconds=cpu, pids_current=1, oom_kills=oom)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the sampler's thread never got there"
        time.sleep(0.005)


def test_a_sampler_keeps_at_most_its_bound_and_the_peak_and_the_oom_kill():
    """Thousands of readings end as at most ``max_samples``: pairs merged (the later
    reading's time, CPU and OOM count, the larger memory) and the interval doubled each
    time; the first reading stays, a one-reading memory spike and an OOM kill survive
    every merge, CPU seconds never go down."""
    spike, kill = 77, 120

    def reading(n):
        return ((99 if n == spike else 1) * MIB, n / 1000, 1 if n >= kill else 0)

    source = Script(reading)
    name = f"b-{id(source)}"
    sampler = Sampler(source, name=name, max_samples=40, interval=0.0002).start()
    wait_for(lambda: source.calls > 150)
    series = sampler.stop()
    assert series is sampler.stop()  # idempotent
    assert 20 <= len(series.times) <= 40
    assert series.times[0] < 0.01 and series.cpu[0] == 0.0  # the first reading: at start
    assert series.times == sorted(series.times) and series.cpu == sorted(series.cpu)
    assert max(series.memory) == 99 * MIB
    assert [kills for _, kills in series.oom_marks()] == [1]
    assert sampler.interval >= 0.0002 * 2 ** 6  # 150 readings: 40 -> 21 at least 6 times
    assert series.limit == 64 * MIB and series.name == name
    assert not [t for t in threading.enumerate() if t.name == f"nsbox-sampler {name}"]


@pytest.mark.parametrize("gone", ["raises", "closed", "cpu goes down"])
def test_a_sampler_stops_quietly_when_its_source_is_gone(gone):
    """A source whose ``stats()`` raises ``CgroupError``, a closed ``Box``, or CPU time
    going down (a removed cgroup's files read as zero) ends the readings (a closed
    ``Box`` after one last reading); the series holds those before, and ``stop()``
    returns it without an error."""
    source = Script(lambda n: (MIB, (n if gone != "cpu goes down" or n < 5 else 0) / 100, 0),
                    fail_at=5 if gone == "raises" else None)
    name = f"gone-{id(source)}"
    sampler = Sampler(source, name=name, interval=0.001).start()
    if gone == "closed":
        wait_for(lambda: source.calls >= 5)
        source.closed = True
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name == f"nsbox-sampler {name}"])
    calls = source.calls
    series = sampler.stop()
    assert source.calls == calls  # no reading after the source was gone
    assert 5 <= len(series.times) <= calls
    assert series.cpu == sorted(series.cpu)


def test_a_box_closed_before_stop_gives_its_final_figures_as_the_last_reading():
    """A test that closes its box itself: the sampler's next reading is the box's final
    ``stats()`` (taken as it closed, what the table shows), so an OOM kill in its last
    moments is marked on the chart too; then the readings end."""
    sources: list[Script] = []
    sources.append(Script(lambda n: (MIB, n / 100, 2 if sources[0].closed else 0)))
    sampler = Sampler(sources[0], name="closes-itself", interval=60).start()
    sources[0].closed = True
    series = sampler.stop()
    assert series.oom == [0, 2] and [kills for _, kills in series.oom_marks()] == [2]
    assert sources[0].calls == 2


@pytest.mark.parametrize("keys, message", [
    ({"max_samples": 3}, "max_samples=3: keep at least 4 readings"),
    ({"interval": 0}, "interval=0: must be a positive number of seconds"),
    ({"interval": float("nan")}, "interval=nan: must be a positive number of seconds"),
])
def test_a_sampler_refuses_a_bound_it_cannot_keep(keys, message):
    """Fewer than 4 readings or a non-positive interval is a caller's bug: ``ValueError``
    naming it."""
    with pytest.raises(ValueError) as info:
        Sampler(Script(lambda n: (0, 0.0, 0)), **keys)
    assert str(info.value) == message


def test_a_series_survives_json_with_its_units():
    """``to_json``: milliseconds, bytes, microseconds, counts; ``from_json`` gives the
    same series back (to those units), ``oom_marks`` and ``cpu_rates`` are derived."""
    series = Series("db", 1700000000.25, 16 * MIB, [0.0, 0.1, 0.2, 0.4],
                    [MIB, 8 * MIB, None, 2 * MIB], [0.0, 0.05, 0.15, 0.15], [0, 0, 1, 3])
    data = json.loads(json.dumps(series.to_json()))
    assert data == {"name": "db", "start": 1700000000.25, "limit": 16 * MIB,
                    "t": [0, 100, 200, 400], "memory": [MIB, 8 * MIB, None, 2 * MIB],
                    "cpu": [0, 50000, 150000, 150000], "oom": [0, 0, 1, 3]}
    back = Series.from_json(data)
    assert (back.name, back.start, back.limit, back.times, back.memory, back.cpu,
            back.oom) == ("db", 1700000000.25, 16 * MIB, [0.0, 0.1, 0.2, 0.4],
                          [MIB, 8 * MIB, None, 2 * MIB], [0.0, 0.05, 0.15, 0.15], [0, 0, 1, 3])
    assert back.oom_marks() == [(0.2, 1), (0.4, 2)]
    assert [(a, b, round(r, 6)) for a, b, r in back.cpu_rates()] == [
        (0.0, 0.1, 0.5), (0.1, 0.2, 1.0), (0.2, 0.4, 0.0)]


GOOD = {"name": "b", "start": 1.0, "limit": None, "t": [0], "memory": [1], "cpu": [0],
        "oom": [0]}


@pytest.mark.parametrize("data, message", [
    ("x", "t.py::t: nsbox_series: a series is a JSON object, not 'x'"),
    ({**GOOD, "name": 3}, "t.py::t: nsbox_series: series name=3: not a string"),
    ({**GOOD, "start": "now"}, "t.py::t: nsbox_series: series 'b': start='now': not a time"),
    ({**GOOD, "limit": -1}, "t.py::t: nsbox_series: series 'b': limit=-1: not a number of "
                            "bytes"),
    ({**GOOD, "cpu": [0.5]}, "t.py::t: nsbox_series: series 'b': cpu=[0.5]: not a list of "
                             "whole numbers of 0 or more"),
    ({**GOOD, "oom": [0, 1]}, "t.py::t: nsbox_series: series 'b': t, memory, cpu and oom "
                              "differ in length"),
])
def test_bad_series_data_is_named(data, message):
    """A report whose series data is not what ``to_json`` writes (another plugin's
    attribute of the same name, a broken transport) is a ``ValueError`` naming the test,
    the series and the field; the plugin shows it at the end instead of a chart."""
    class Report:
        nodeid = "t.py::t"

    report = Report()
    setattr(report, SERIES_ATTR, [data])
    with pytest.raises(ValueError) as info:
        report_series(report)
    assert str(info.value) == message


def test_the_chart_draws_memory_against_its_limit_cpu_and_the_oom_kill():
    """One test, two boxes started 0.5 s apart on one time axis: a memory line and a CPU
    line per box, the 16 MiB limit as a dashed line that sets the scale, the OOM kill
    as a red line at the reading where the count rose; coordinates checked in the SVG."""
    a = Series("db", 100.0, 16 * MIB, [0.0, 0.5, 1.0], [MIB, 15 * MIB, 2 * MIB],
               [0.0, 0.25, 0.5], [0, 0, 1])
    b = Series("web", 100.5, None, [0.0, 0.5], [MIB, 4 * MIB], [0.0, 0.1], [0, 0])
    svg = ET.fromstring(timeline_chart([b, a], "memory and CPU of t over time"))
    assert svg.find(f"{SVG}title").text == "memory and CPU of t over time"
    classes = [el.get("class") for el in svg.iter()]
    assert classes.count("nsbox-memory") == 2 and classes.count("nsbox-cpu") == 2
    limit, = [el for el in svg.iter(f"{SVG}line") if el.get("class") == "nsbox-limit"]
    oom, = [el for el in svg.iter(f"{SVG}line") if el.get("class") == "nsbox-oom"]
    memory = {el.get("stroke"): [tuple(map(float, p.split(","))) for p in
                                 el.get("points").split()]
              for el in svg.iter(f"{SVG}polyline") if el.get("class") == "nsbox-memory"}
    db, web = memory[PALETTE[0]], memory[PALETTE[1]]  # colours in start order
    left, right = db[0][0], db[-1][0]
    assert web[0][0] == pytest.approx((left + right) / 2, abs=0.1)  # started at 0.5 s of 1
    assert float(oom.get("x1")) == pytest.approx(right, abs=0.1)  # the kill: at 1.0 s
    top, bottom = 34.0, 144.0  # the memory panel
    scale = (bottom - top) / (16 * MIB * 1.08)
    assert float(limit.get("y1")) == pytest.approx(bottom - 16 * MIB * scale, abs=0.1)
    assert db[1][1] == pytest.approx(bottom - 15 * MIB * scale, abs=0.1)
    texts = " ".join(el.text or "" for el in svg.iter(f"{SVG}text"))
    assert "limit 16.0 MiB (db)" in texts and "OOM kill" in texts and "1 s" in texts


def test_a_chart_without_readings_says_so():
    """A series with no reading (its cgroup was gone at once) gives a chart saying so."""
    svg = ET.fromstring(timeline_chart([Series("x", 1.0, None, [], [], [], [])], "t"))
    assert "no readings" in [el.text for el in svg.iter(f"{SVG}text")]


def test_the_page_names_every_failed_test_and_charts_the_heaviest():
    """``html_page``: every failed or errored test is listed (one without boxes too),
    charted when it has series even if lighter than the ``charts`` heaviest, and a note
    says how many lighter tests have no chart."""
    from pytest_nsbox.teststats import TestStats

    rows = [TestStats(f"t.py::test_{i}", (10 - i) * MIB, 0.1, 0.1, 0) for i in range(6)]
    timelines = {row.nodeid: [Series("b", 1.0, None, [0.0, 0.1], [MIB, MIB], [0.0, 0.01],
                                     [0, 0])] for row in rows}
    outcomes = {row.nodeid: "passed" for row in rows}
    outcomes.update({"t.py::test_5": "failed", "t.py::test_nobox": "error"})
    page = Dom.parse(html_page(rows, timelines=timelines, outcomes=outcomes, charts=2))
    failed = page.find("ul", "failed-tests").all("li")
    assert [li.named() for li in failed] == [("t.py::test_5", "failed"),
                                             ("t.py::test_nobox", "error")]
    assert failed[0].all("a") and not failed[1].all("a")
    assert failed[1].text().endswith(" (no box)")
    charted = [s.find("h3").named() for s in page.all("section", "test-chart")]
    assert charted == [("t.py::test_0", "passed"), ("t.py::test_1", "passed"),
                       ("t.py::test_5", "failed")]
    assert "Charts of every failed test and the 2 heaviest others; 3 lighter tests" \
        in page.text()


def test_without_pytest_html_the_extra_is_left_out(monkeypatch):
    """pytest-html is optional: where ``pytest_html.extras`` cannot be imported, a
    report gets no ``extras`` and the session goes on."""
    monkeypatch.setitem(sys.modules, "pytest_html.extras", None)  # import fails
    collector = Collector(top=10, page=None, controller=True, html_report=True)
    report = pytest.TestReport("t.py::t", ("t.py", 1, "t"), {}, "passed", None, "teardown")
    setattr(report, SERIES_ATTR, [GOOD])
    collector.pytest_runtest_logreport(report)
    assert not hasattr(report, "extras")
    assert collector.timelines["t.py::t"][0].memory == [1]
    assert collector.html_report is False


# -- real boxes, pytester --------------------------------------------------------------------

TESTS = f"""
    import pytest

    BUSYBOX = pytest.mark.sandbox(image="busybox")

    @BUSYBOX
    def test_hog(nsbox):
        nsbox.run("sleep 0.2; {HOG.format(n=50 * MIB)}; sleep 0.2", check=True)

    @pytest.mark.sandbox(image="busybox", memory="16M")
    def test_oom(nsbox):
        nsbox.run("sleep 0.2")
        assert nsbox.run("{HOG.format(n=50 * MIB)}").oom_killed
        nsbox.run("sleep 0.5")
        nsbox.close()
        with open("oom_kills", "w") as out:  # the kernel's count: a pipeline may lose two
            out.write(str(nsbox.stats().oom_kills))

    @BUSYBOX
    def test_two_boxes_fail(nsbox_factory):
        nsbox_factory(name="one").run("sleep 0.2")
        nsbox_factory(name="two", memory="32M").run("{HOG.format(n=20 * MIB)}")
        assert False, "fails with boxes"

    @pytest.fixture
    def broken():
        raise RuntimeError("setup breaks")

    def test_error_in_setup(broken):
        pass

    def test_fails_without_boxes():
        assert False, "fails without boxes"

    def test_passes_without_boxes():
        pass
"""
DUMP_SERIES = """
    import json
    import pytest

    WORKER = []

    def pytest_configure(config):
        WORKER.append(hasattr(config, "workerinput"))

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(report):
        if report.when == "teardown" and not WORKER[0]:  # the controller's copy
            with open("series.jsonl", "a") as out:
                out.write(json.dumps([report.nodeid.split("::")[-1],
                                      getattr(report, "nsbox_series", None)]) + "\\n")
"""


def dumped(path: Path) -> dict[str, list[Series] | None]:
    found = {}
    for line in path.read_text().splitlines():
        name, data = json.loads(line)
        found[name] = None if data is None else [Series.from_json(s) for s in data]
    return found


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["one process", "xdist"])
def test_each_box_is_sampled_and_its_series_reaches_the_reporting_process(pytester, xdist):
    """Every box of a test is sampled while it runs; its series arrives, under xdist
    too, on the teardown report the controller logs: memory rising past 40 MiB for a
    50 MiB hog, the 16M box's limit with its OOM kills marked (the box's whole count), two
    series for a test with two boxes (each its own name and limit), none for tests without
    boxes; each series' highest memory is its box's peak (``memory.max_usage_in_bytes``) to
    the byte; JUnit XML carries the four figures and not the series."""
    pytester.makeconftest(DUMP_SERIES)
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*ARGS, *xdist, "--nsbox-stats", "--junitxml=out.xml")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    series = dumped(pytester.path / "series.jsonl")
    assert series["test_error_in_setup"] is None and series["test_fails_without_boxes"] is None
    assert series["test_passes_without_boxes"] is None
    hog, = series["test_hog"]
    assert max(hog.memory) >= 40 * MIB and hog.limit is None and hog.oom_marks() == []
    assert hog.times[-1] >= 0.4 and 2 <= len(hog.times) <= 200
    assert hog.cpu[-1] > 0
    oom, = series["test_oom"]
    assert oom.limit == 16 * MIB and max(oom.memory) <= 16 * MIB
    # the kernel may kill more than one of the pipeline's processes: every kill is marked,
    # between the sleeps
    marks = oom.oom_marks()
    assert marks and all(0.2 <= when <= oom.times[-1] - 0.1 for when, _ in marks)
    assert oom.oom[0] == 0 and sum(kills for _, kills in marks) == oom.oom[-1]
    one, two = sorted(series["test_two_boxes_fail"], key=lambda s: s.start)
    assert (one.name, one.limit, two.name, two.limit) == ("one", None, "two", 32 * MIB)
    assert max(two.memory) >= 16 * MIB > max(one.memory)
    xml = (pytester.path / "out.xml").read_text()
    assert SERIES_ATTR not in xml and '"memory"' not in xml
    assert xml.count('name="nsbox_memory_peak_bytes"') == 3
    peaks = {case.get("name"): int(prop.get("value"))
             for case in ET.fromstring(xml).iter("testcase") for prop in case.iter("property")
             if prop.get("name") == "nsbox_memory_peak_bytes"}
    # a spike between two readings is kept: the series reaches the box's peak exactly
    assert max(hog.memory) == peaks["test_hog"] and max(oom.memory) == peaks["test_oom"]
    assert max(max(one.memory), max(two.memory)) == peaks["test_two_boxes_fail"]
    kills = {case.get("name"): int(prop.get("value"))
             for case in ET.fromstring(xml).iter("testcase") for prop in case.iter("property")
             if prop.get("name") == "nsbox_oom_kills"}
    assert kills["test_oom"] == oom.oom[-1] and kills["test_hog"] == 0


ISOLATION_LIKE = """
    import os
    import subprocess
    import sys

    import pytest
    from pytest_nsbox import teststats
    from pytest_nsbox.cgroups.base import Limits
    from pytest_nsbox.runtime.engine import default_engine

    @pytest.fixture
    def cgroup(request):
        # As the isolation worker does for an isolated test: the test's own cgroup,
        # sampled while the test's processes run in it, stopped before it is removed.
        group = default_engine().cgroups.create(f"nsbox-{os.urandom(6).hex()}",
                                                Limits(memory=32 << 20))
        sampler = teststats.sampler(request.node, group)
        try:
            yield group
        finally:
            if sampler is not None:
                sampler.stop()
            group.destroy()

    def run_in(group, code):
        join = "; ".join(f"echo $$ > {path}" for path in group.procs_files())
        return subprocess.run(["sh", "-c", f'{join}; exec "$0" -c "$1"', sys.executable, code])
"""


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["one process", "xdist"])
def test_the_isolation_workers_sampler_puts_a_cgroups_series_on_the_report(pytester, xdist):
    """``teststats.sampler(item, cgroup)``, the call the isolation worker makes on an
    isolated test's cgroup: a process of 24 MiB, then one killed by the OOM killer at the
    cgroup's 32M, show in the series on the test's teardown report (under xdist too); the
    limit is the cgroup's; the test without the fixture has no series; without
    ``--nsbox-stats`` there is no sampler at all."""
    pytester.makeconftest(ISOLATION_LIKE + DUMP_SERIES)
    pytester.makepyfile("""
        import time
        from pytest_nsbox import teststats

        def test_in_a_cgroup(cgroup):
            from conftest import run_in

            assert run_in(cgroup, "import time; b = b'x' * (24 << 20); time.sleep(0.3)"
                          ).returncode == 0
            assert run_in(cgroup, "b = b'x' * (64 << 20)").returncode == -9
            time.sleep(0.1)

        def test_plain():
            pass

        def test_no_sampler_without_the_option(request, pytestconfig):
            if pytestconfig.getoption("nsbox_stats") is None:
                assert teststats.sampler(request.node, object()) is None
    """)
    result = pytester.runpytest_subprocess(*ARGS, *xdist, "--nsbox-stats")
    result.assert_outcomes(passed=3)
    series = dumped(pytester.path / "series.jsonl")
    assert series["test_plain"] is None
    cgroup, = series["test_in_a_cgroup"]
    assert cgroup.name == "isolated test" and cgroup.limit == 32 * MIB
    assert 20 * MIB <= max(cgroup.memory) <= 32 * MIB
    assert [kills for _, kills in cgroup.oom_marks()] == [1]
    assert cgroup.times[-1] >= 0.3
    (pytester.path / "series.jsonl").unlink()
    pytester.runpytest_subprocess(*ARGS, *xdist).assert_outcomes(passed=3)
    assert set(dumped(pytester.path / "series.jsonl").values()) == {None}


# -- in a real browser -----------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium (Debian's ``chromium``) in a network namespace of its own, so
    nothing it might fetch leaves the machine; a fresh profile per call."""
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed: ci/setup installs it (Debian package chromium)"
    unshare = shutil.which("unshare")
    assert unshare, "unshare is not installed: ci/setup installs it (util-linux)"
    return subprocess.run([unshare, "--net", "--", exe, *CHROMIUM_FLAGS,
                           f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def kills_drawn(chart: Dom) -> int:
    """The OOM kills a chart marks: the sum of its ``nsbox-oom`` lines' counts, each
    titled "N process(es) of NAME killed for memory by ..."."""
    titles = [line.find("title").text() for line in chart.all("line", "nsbox-oom")]
    assert all(re.match(r"\d+ process(es)? of .+ killed for memory", t) for t in titles), titles
    return sum(int(title.split()[0]) for title in titles)


class Dom:
    """The DOM Chromium dumps (``--dump-dom``), as a tree to query by tag and class."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr", "area"}

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Dom | str] = []

    @classmethod
    def parse(cls, html: str) -> Dom:
        root = cls("#document", {})
        stack = [root]

        class Builder(HTMLParser):
            def handle_starttag(self, tag, attrs):
                node = cls(tag, {k: v or "" for k, v in attrs})
                stack[-1].children.append(node)
                if tag not in cls.VOID:
                    stack.append(node)

            def handle_startendtag(self, tag, attrs):
                stack[-1].children.append(cls(tag, {k: v or "" for k, v in attrs}))

            def handle_endtag(self, tag):
                for i in range(len(stack) - 1, 0, -1):
                    if stack[i].tag == tag:
                        del stack[i:]
                        break

            def handle_data(self, data):
                stack[-1].children.append(data)

        Builder().feed(html)
        return root

    def all(self, tag: str | None = None, cls: str | None = None) -> list[Dom]:
        found = []
        for child in self.children:
            if isinstance(child, Dom):
                if ((tag is None or child.tag == tag)
                        and (cls is None or cls in child.attrs.get("class", "").split())):
                    found.append(child)
                found += child.all(tag, cls)
        return found

    def find(self, tag: str | None = None, cls: str | None = None) -> Dom:
        found = self.all(tag, cls)
        assert found, f"no <{tag} class={cls!r}> in <{self.tag}>"
        return found[0]

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children
                       if not (isinstance(c, Dom) and c.tag in ("title", "style")))

    def named(self) -> tuple[str, str]:
        """A failed-test ``li`` or a chart's ``h3``: (node id, outcome)."""
        first = self.children[0]
        nodeid = first.text() if isinstance(first, Dom) else first.strip()
        return nodeid, self.find("span", "outcome").text()


def png_colours(data: bytes) -> tuple[int, int, dict[tuple[int, int, int], int]]:
    """Width, height and how many pixels of each RGB colour an 8-bit RGB(A),
    non-interlaced PNG has (PNG spec: IHDR, the IDAT zlib stream, filters 0-4)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    previous = bytearray(stride)
    counts: dict[tuple[int, int, int], int] = {}
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous))
        elif kind in (1, 3, 4):
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up = previous[i]
                if kind == 1:
                    line[i] = (line[i] + left) & 0xFF
                elif kind == 3:
                    line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
                else:
                    corner = previous[i - bpp] if i >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                    line[i] = (line[i] + pred) & 0xFF
        for i in range(0, stride, bpp):
            pixel = (line[i], line[i + 1], line[i + 2])
            counts[pixel] = counts.get(pixel, 0) + 1
        previous = line
    return width, height, counts


def rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def test_the_page_renders_in_chromium_with_every_failed_test(pytester, tmp_path):
    """``--nsbox-stats=PATH.html`` under ``-n 2``, opened in headless Chromium: the DOM
    it builds lists every failed and errored test (with boxes or not), has a chart per
    test with boxes (two memory lines for the test with two boxes, the OOM kill and the
    16M limit on the OOM test's, none on the hog's), nothing loaded from elsewhere; its
    screenshot is the window's size and shows the bar and line colours."""
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*ARGS, "-n", "2", "--nsbox-stats=stats.html")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    page = pytester.path / "stats.html"
    dom = Dom.parse(chromium(tmp_path / "profile", "--dump-dom", page.as_uri()).stdout)
    failed = dict(li.named() for li in dom.find("ul", "failed-tests").all("li"))
    module = "test_the_page_renders_in_chromium_with_every_failed_test.py"
    assert failed == {f"{module}::test_two_boxes_fail": "failed",
                      f"{module}::test_error_in_setup": "error",
                      f"{module}::test_fails_without_boxes": "failed"}
    sections = {s.find("h3").named(): s for s in dom.all("section", "test-chart")}
    assert set(sections) == {(f"{module}::test_hog", "passed"),
                             (f"{module}::test_oom", "passed"),
                             (f"{module}::test_two_boxes_fail", "failed")}
    sections = {nodeid.split("::")[1]: s for (nodeid, _), s in sections.items()}
    oom = sections["test_oom"]
    assert kills_drawn(oom) == int((pytester.path / "oom_kills").read_text()) >= 1
    assert len(oom.all("line", "nsbox-limit")) == 1
    assert sections["test_hog"].all("line", "nsbox-oom") == []
    assert len(sections["test_two_boxes_fail"].all("polyline", "nsbox-memory")) == 2
    for section in sections.values():
        assert section.all("polyline", "nsbox-cpu")
    assert dom.all("script") == [] and dom.all("img") == []
    assert all(a.attrs["href"].startswith("#") for a in dom.all("a"))
    shot = tmp_path / "page.png"
    chromium(tmp_path / "profile", "--window-size=1000,1400", f"--screenshot={shot}",
             page.as_uri())
    width, height, counts = png_colours(shot.read_bytes())
    assert (width, height) == (1000, 1400)
    for colour in ("#4a7fb5", "#c8553d"):  # the memory and CPU bars, solid fills
        assert counts.get(rgb(colour), 0) > 500, f"no {colour} bars in the screenshot"


def test_pytest_html_gets_the_same_chart_as_an_extra(pytester, tmp_path):
    """pytest-html (``--html --self-contained-html``, under ``-n 2``): opened in
    headless Chromium, whose script renders the report's rows, each test with boxes has
    the chart in its extras row, the OOM test's with its OOM kill; tests without boxes
    have none."""
    import importlib.util

    assert importlib.util.find_spec("pytest_html"), (
        "pytest-html is not installed: it is in the test extra (ci/setup installs it)")
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*ARGS, "-n", "2", "--nsbox-stats",
                                           "--html=report.html", "--self-contained-html")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    page = (pytester.path / "report.html").as_uri()
    dom = Dom.parse(chromium(tmp_path / "profile", "--dump-dom", page).stdout)
    rows = {body.attrs["id"].split("::", 1)[1]: body  # the row template has no id
            for body in dom.all("tbody", "results-table-row") if "id" in body.attrs}
    assert set(rows) == {"test_hog", "test_oom", "test_two_boxes_fail",
                         "test_error_in_setup::setup", "test_fails_without_boxes",
                         "test_passes_without_boxes"}
    charts = {name: body.find("div", "extraHTML").all("svg", "nsbox-timeline")
              for name, body in rows.items()}
    assert {name for name, found in charts.items() if found} == {
        "test_hog", "test_oom", "test_two_boxes_fail"}
    assert all(len(found) <= 1 for found in charts.values())
    assert kills_drawn(charts["test_oom"][0]) == int((pytester.path / "oom_kills").read_text())
    assert len(charts["test_two_boxes_fail"][0].all("polyline", "nsbox-memory")) == 2


def test_isolated_tests_are_on_the_page_written_outside_the_rootdir(pytester, tmp_path):
    """``--nsbox-isolate --nsbox-stats=PATH.html`` with PATH outside the rootdir (which an
    isolation worker's box does not show): the isolation worker, a pytest given the same
    arguments (``isolate.INNER_ENV`` set), leaves the option to this process, so the run
    works, the page is written where asked and lists the isolated failure and the
    isolated tests' figures (``teststats.properties``, attached by the isolation code)."""
    from pytest_nsbox import isolate, teststats

    assert teststats.ISOLATED_ENV == isolate.INNER_ENV
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(memory="32M")
        def test_holds_memory():
            b = b"x" * (24 << 20)

        def test_fails():
            assert False
    """)
    page = tmp_path / "elsewhere" / "stats.html"
    page.parent.mkdir()
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-isolate", f"--nsbox-stats={page}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"page with charts: {page}"])
    dom = Dom.parse(page.read_text())
    assert [(nodeid.split("::")[1], outcome) for nodeid, outcome in
            (li.named() for li in dom.find("ul", "failed-tests").all("li"))] == [
        ("test_fails", "failed")]
    tested = {tr.all("td")[-1].text().split("::")[1]: tr.all("td")[1].text()
              for tr in dom.find("table").all("tr")[1:]}
    assert set(tested) == {"test_holds_memory", "test_fails"}
    assert float(tested["test_holds_memory"].split()[0]) >= 24


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["one process", "xdist"])
def test_an_isolated_tests_cgroup_is_sampled_onto_its_report_and_the_page(pytester, tmp_path,
                                                                          xdist):
    """``--nsbox-isolate``: the pytest process samples each isolated test's cgroup
    (``teststats.sampler`` in ``isolate.Worker.run``), so a test that holds 24 MiB for
    0.3 s and is then killed by the OOM killer at its 32M has one series (the cgroup's
    limit, the kill marked) on its teardown report, under xdist too; both failed tests
    are on the page, which is written where asked even outside the rootdir (the
    isolation worker, a pytest with the same arguments, leaves it alone)."""
    pytester.makeconftest(DUMP_SERIES)
    pytester.makepyfile("""
        import time
        import pytest

        @pytest.mark.sandbox(memory="32M")
        def test_hungry():
            b = b"x" * (24 << 20)
            time.sleep(0.3)
            c = b"x" * (64 << 20)

        def test_fails():
            assert False
    """)
    page = tmp_path / "elsewhere" / "stats.html"
    page.parent.mkdir()
    result = pytester.runpytest_subprocess(*ARGS, *xdist, "--nsbox-isolate",
                                           f"--nsbox-stats={page}")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*::test_hungry: exceeded memory=32M*"])
    series = dumped(pytester.path / "series.jsonl")
    cgroup, = series["test_hungry"]
    assert cgroup.name == "isolated test" and cgroup.limit == 32 * MIB
    assert 20 * MIB <= max(cgroup.memory) <= 32 * MIB
    assert [kills for _, kills in cgroup.oom_marks()] == [1]
    assert cgroup.oom_marks()[0][0] >= 0.3
    assert len(series["test_fails"]) == 1  # every isolated test has its cgroup's series
    dom = Dom.parse(page.read_text())
    assert sorted(li.named()[0].split("::")[1] for li in dom.find("ul", "failed-tests").all(
        "li")) == ["test_fails", "test_hungry"]
    charts = {s.find("h3").named()[0].split("::")[1]: s
              for s in dom.all("section", "test-chart")}
    assert set(charts) == {"test_hungry", "test_fails"}
    assert len(charts["test_hungry"].all("line", "nsbox-oom")) == 1
