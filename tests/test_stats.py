"""``--nsbox-stats``: per-test peak memory, CPU seconds, wall seconds and OOM kills, in a
table at the end and as JUnit XML properties (pytester, real boxes).

References: pytest ``_pytest/junitxml.py`` ``LogXML.finalize`` (the teardown report's
``user_properties`` become ``<property name= value=>``); pytest ``_pytest/reports.py``
``_report_to_json`` and pytest-xdist ``xdist/remote.py`` ``serialize_report`` (a worker's
report, ``user_properties`` included, reaches the controller's
``pytest_runtest_logreport``); the kernel's cgroup docs (v1 ``memory.max_usage_in_bytes``
and ``memory.oom_control`` ``oom_kill``, v2 ``memory.peak`` and ``memory.events``), which
``Box.stats()`` reads.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from pytest_nsbox.teststats import (CPU_SECONDS, MEMORY_PEAK, NAMES, OOM_KILLS, WALL_SECONDS,
                                    TestStats, properties, table)

ARGS = ("-p", "no:cacheprovider")
MIB = 1024 ** 2
# busybox tail keeps its last 10 lines; /dev/zero has no newline, so it holds all of it
HOG = "head -c {n} /dev/zero | tail | wc -c"
TESTS = f"""
    import pytest

    BUSYBOX = pytest.mark.sandbox(image="busybox")

    @BUSYBOX
    def test_light(nsbox):
        nsbox.run("true", check=True)

    @BUSYBOX
    def test_hog(nsbox):
        assert nsbox.run("{HOG.format(n=50 * MIB)}", check=True).stdout.strip() == "{50 * MIB}"

    @BUSYBOX
    def test_middle(nsbox):
        assert nsbox.run("{HOG.format(n=20 * MIB)}", check=True).stdout.strip() == "{20 * MIB}"

    @pytest.mark.sandbox(image="busybox", memory="16M")
    def test_oom(nsbox):
        assert nsbox.run("{HOG.format(n=50 * MIB)}").oom_killed
        nsbox.close()
        with open("oom_kills", "w") as out:  # the kernel's count: a pipeline may lose two
            out.write(str(nsbox.stats().oom_kills))

    def test_without_boxes():
        pass
"""
ROW = re.compile(r"^\s*(?P<memory>-|\S+ \S*B)\s+(?P<cpu>-|\d+\.\d\d)\s+(?P<wall>\d+\.\d\d)"
                 r"\s+(?P<oom>\d+)\s+(?P<test>\S+)$")
UNITS = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}


def stats_rows(lines: list[str]) -> list[dict[str, str]]:
    """The rows of the ``nsbox stats`` section, in order; fails if the section is missing."""
    start = next(i for i, line in enumerate(lines) if re.match(r"^=+ nsbox stats =+$", line))
    header = next(i for i, line in enumerate(lines) if i > start and re.match(
        r"^peak memory +CPU s +wall s +OOM kills +test$", line))
    rows = []
    for line in lines[header + 1:]:
        match = ROW.match(line)
        if match is None:
            break
        rows.append(match.groupdict())
    return rows


def size(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def junit_properties(path) -> dict[str, dict[str, str]]:
    """Each testcase's ``<property>`` elements: {test name: {name: value}}."""
    found = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        props = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        assert len(props) == len(dict(props)), f"a property twice: {props}"
        found[case.get("name")] = dict(props)
    return found


def test_table_lists_tests_with_boxes_heaviest_first(pytester):
    """The issue's table: tests with boxes sorted by peak memory, a 50 MiB allocation in a
    box shown at 40 MiB or more, the OOM kills of a 16M box counted (as many as its
    ``Box.stats()``: the kernel may kill more than one of the pipeline's processes); a test
    without boxes is not in it."""
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-stats")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["all 4 tests with boxes, sorted by peak memory (largest "
                                 "box), then CPU seconds"])
    rows = stats_rows(result.outlines)
    names = [row["test"].split("::")[1] for row in rows]
    assert names == ["test_hog", "test_middle", "test_oom", "test_light"], rows
    memory = [size(row["memory"]) for row in rows]
    assert memory == sorted(memory, reverse=True)
    assert memory[0] >= 40 * MIB
    assert 16 * MIB <= memory[1] < 40 * MIB
    kills = (pytester.path / "oom_kills").read_text()
    assert int(kills) >= 1
    assert [row["oom"] for row in rows] == ["0", "0", kills, "0"]
    assert all(float(row["cpu"]) > 0 or row["test"].endswith("light") for row in rows)
    result.stdout.no_fnmatch_line("*test_without_boxes*")


def test_junit_xml_carries_the_figures_as_properties(pytester):
    """JUnit XML: each test with boxes has the four ``nsbox_`` properties (bytes, seconds,
    a count), the same figures as the table; a test without boxes has none."""
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-stats", "--junitxml=out.xml")
    result.assert_outcomes(passed=5)
    props = junit_properties(pytester.path / "out.xml")
    assert props["test_without_boxes"] == {}
    for name in ("test_light", "test_hog", "test_middle", "test_oom"):
        assert set(props[name]) == set(NAMES), props[name]
    hog = props["test_hog"]
    assert int(hog[MEMORY_PEAK]) >= 40 * MIB
    assert float(hog[CPU_SECONDS]) > 0
    assert 0 < float(hog[WALL_SECONDS]) < 60
    assert hog[OOM_KILLS] == "0"
    assert props["test_oom"][OOM_KILLS] == (pytester.path / "oom_kills").read_text()
    assert int(props["test_oom"][OOM_KILLS]) >= 1
    assert int(props["test_oom"][MEMORY_PEAK]) <= 16 * MIB
    rows = {row["test"].split("::")[1]: row for row in stats_rows(result.outlines)}
    for name, row in rows.items():
        assert f"{float(props[name][CPU_SECONDS]):.2f}" == row["cpu"]
        assert f"{float(props[name][WALL_SECONDS]):.2f}" == row["wall"]


def test_an_isolated_tests_wall_seconds_are_its_call_phase(pytester):
    """``nsbox_wall_seconds`` of an isolated test is its call phase, as for a test with
    boxes: a fixture's second of setup and of teardown is not in it, the call's 0.3 s is;
    a test that fails in setup has 0."""
    pytester.makepyfile("""
        import time
        import pytest

        @pytest.fixture
        def slow():
            time.sleep(1)
            yield
            time.sleep(1)

        @pytest.fixture
        def broken():
            time.sleep(0.5)
            raise RuntimeError("setup breaks")

        @pytest.mark.sandbox(memory="64M")
        def test_isolated(slow):
            time.sleep(0.3)

        @pytest.mark.sandbox(memory="64M")
        def test_setup_fails(broken):
            pass
    """)
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-isolate", "--nsbox-stats",
                                           "--junitxml=out.xml")
    result.assert_outcomes(passed=1, errors=1)
    props = junit_properties(pytester.path / "out.xml")
    assert 0.3 <= float(props["test_isolated"][WALL_SECONDS]) < 1.0
    assert float(props["test_setup_fails"][WALL_SECONDS]) == 0


def test_a_tests_boxes_largest_peak_summed_cpu_and_oom_kills(pytester):
    """Several boxes in one test: peak memory is the largest box's peak (what a box's
    ``memory=`` is compared with), CPU seconds and OOM kills the sum of the boxes'; each
    box's own figures are its final ``Box.stats()`` (read before its init was killed)."""
    pytester.makepyfile(f"""
        import json
        import pytest

        @pytest.mark.sandbox(image="busybox")
        def test_three(nsbox_factory):
            boxes = [nsbox_factory(), nsbox_factory(), nsbox_factory(memory="8M")]
            boxes[0].run("{HOG.format(n=30 * MIB)}", check=True)
            boxes[1].run("{HOG.format(n=10 * MIB)}", check=True)
            assert boxes[2].run("{HOG.format(n=30 * MIB)}").oom_killed
            for box in boxes:
                box.close()
            figures = [box.stats() for box in boxes]
            with open("boxes.json", "w") as out:
                json.dump([[s.memory_peak, s.cpu_seconds, s.oom_kills] for s in figures], out)
    """)
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-stats", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    boxes = json.loads((pytester.path / "boxes.json").read_text())
    props = junit_properties(pytester.path / "out.xml")["test_three"]
    assert int(props[MEMORY_PEAK]) == max(peak for peak, _, _ in boxes) >= 28 * MIB
    assert float(props[CPU_SECONDS]) == pytest.approx(sum(cpu for _, cpu, _ in boxes),
                                                      abs=1e-6)
    assert int(props[OOM_KILLS]) == sum(oom for _, _, oom in boxes) >= 1


def test_the_table_under_xdist_has_every_workers_tests(pytester):
    """``-n 2``: the table is built from the reports the controller receives, so it lists
    the tests of both workers, in the same order as without xdist; JUnit XML too."""
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*ARGS, "-n", "2", "--nsbox-stats",
                                           "--junitxml=out.xml")
    result.assert_outcomes(passed=5)
    rows = stats_rows(result.outlines)
    assert [row["test"].split("::")[1] for row in rows] == [
        "test_hog", "test_middle", "test_oom", "test_light"], rows
    assert size(rows[0]["memory"]) >= 40 * MIB
    assert len([line for line in result.outlines if "= nsbox stats =" in line]) == 1
    props = junit_properties(pytester.path / "out.xml")
    assert int(props["test_hog"][MEMORY_PEAK]) >= 40 * MIB
    assert props["test_without_boxes"] == {}


def test_without_the_option_nothing_is_shown_or_added(pytester):
    """The option off: no section, no properties, and none of the per-test hooks
    registered (the plugin object exists only with ``--nsbox-stats``)."""
    pytester.makepyfile(TESTS + """
    def test_no_collector(pytestconfig):
        assert pytestconfig.pluginmanager.get_plugin("nsbox-teststats") is None
    """)
    result = pytester.runpytest_subprocess(*ARGS, "--junitxml=out.xml")
    result.assert_outcomes(passed=6)
    result.stdout.no_fnmatch_line("*nsbox stats*")
    assert all(props == {} for props in junit_properties(pytester.path / "out.xml").values())


def test_ini_top_limits_the_rows_and_the_header_says_so(pytester):
    """Ini ``nsbox_stats_top``: the N heaviest rows, the header naming N and the total."""
    pytester.makeini("""
        [pytest]
        nsbox_stats_top = 2
    """)
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-stats")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["the 2 heaviest of 4 tests with boxes, sorted by peak "
                                 "memory (largest box), then CPU seconds"])
    assert [row["test"].split("::")[1] for row in stats_rows(result.outlines)] == [
        "test_hog", "test_middle"]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_is_self_contained_with_a_bar_per_test_and_figure(pytester):
    """``--nsbox-stats=PATH.html``: the table is shown and a page written with an inline
    SVG chart of peak memory and one of CPU seconds (one bar per test with boxes) and a
    chart over time per test, no script and nothing loaded from elsewhere (links only
    within the page); the terminal names the page."""
    pytester.makepyfile(TESTS)
    pytester.mkdir("out")
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-stats=out/stats.html", "-n", "2")
    result.assert_outcomes(passed=5)
    assert len(stats_rows(result.outlines)) == 4
    path = pytester.path / "out" / "stats.html"
    result.stdout.fnmatch_lines([f"page with charts: {path}"])
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    tags = [tag for tag, _ in page.tags]
    svgs = [attrs.get("class") for tag, attrs in page.tags if tag == "svg"]
    assert svgs.count(None) == 2  # the bar charts; each test's own chart is tested in
    assert svgs.count("nsbox-timeline") == 4  # test_stats_pictures.py
    first_timeline = next(i for i, (tag, attrs) in enumerate(page.tags)
                          if attrs.get("class") == "nsbox-timeline")
    assert tags[:first_timeline].count("rect") == 8
    assert "script" not in tags
    assert not [attrs for _, attrs in page.tags if "src" in attrs]
    assert all(attrs["href"].startswith("#") for _, attrs in page.tags if "href" in attrs)
    text = " ".join(page.text)
    for name in ("test_hog", "test_middle", "test_oom", "test_light"):
        assert f"::{name}" in text
    assert "test_without_boxes" not in text


@pytest.mark.parametrize("ini, option, message", [
    ("", "--nsbox-stats=stats.txt",
     "ERROR: --nsbox-stats=stats.txt: the page's path must end in .html (e.g. "
     "--nsbox-stats=stats.html); to give test paths after the flag alone, put --nsbox-stats "
     "after them"),
    ("", "--nsbox-stats=no/such/dir/stats.html",
     "ERROR: --nsbox-stats=no/such/dir/stats.html: no directory */no/such/dir to write the "
     "page in"),
    ("nsbox_stats_top = many", "--nsbox-stats",
     "ERROR: ini nsbox_stats_top='many': not a number of rows; use e.g. nsbox_stats_top = 20 "
     "(0: every test)"),
])
def test_bad_values_are_usage_errors_naming_the_fix(pytester, ini, option, message):
    """A bad page path or row count stops the run before any test, naming the value
    and what would be right (pytest-timeout's rule: say where the bad value came from)."""
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess(*ARGS, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_figures_attached_by_other_code_are_read_back_and_kept(pytester):
    """The isolation code's interface: ``properties(...)`` appended to a teardown report
    (here by a conftest wrapper, inside ours) puts the test in the table with those
    figures, and a test with boxes whose report already carries them keeps them, once;
    a property that is not a number is named at the end, not a crash."""
    pytester.makeconftest("""
        import pytest
        from pytest_nsbox.teststats import properties

        FIGURES = {
            "test_isolated": properties(memory_peak=3 * 1024**3, cpu_seconds=12.5,
                                        wall_seconds=20.25, oom_kills=2),
            "test_isolated_unmeasured": properties(memory_peak=None, cpu_seconds=None,
                                                   wall_seconds=1.5, oom_kills=0),
            "test_with_box": properties(memory_peak=7, cpu_seconds=0.5, wall_seconds=0.25,
                                        oom_kills=0),
            "test_bad": [("nsbox_wall_seconds", "soon")],
        }

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_makereport(item, call):
            report = yield
            if report.when == "teardown" and item.name in FIGURES:
                report.user_properties.extend(FIGURES[item.name])
            return report
    """)
    pytester.makepyfile("""
        import pytest

        def test_isolated():
            pass

        def test_isolated_unmeasured():
            pass

        @pytest.mark.sandbox(image="busybox")
        def test_with_box(nsbox):
            nsbox.run("true")

        def test_bad():
            pass
    """)
    result = pytester.runpytest_subprocess(*ARGS, "--nsbox-stats", "--junitxml=out.xml")
    result.assert_outcomes(passed=4)
    rows = stats_rows(result.outlines)
    assert [(r["test"].split("::")[1], r["memory"], r["cpu"], r["wall"], r["oom"])
            for r in rows] == [
        ("test_isolated", "3.0 GiB", "12.50", "20.25", "2"),
        ("test_with_box", "7 B", "0.50", "0.25", "0"),
        ("test_isolated_unmeasured", "-", "-", "1.50", "0")]
    result.stdout.fnmatch_lines([
        "nsbox stats: *::test_bad: property nsbox_wall_seconds='soon' is not a float of 0 "
        "or more"])
    props = junit_properties(pytester.path / "out.xml")
    assert props["test_with_box"] == {MEMORY_PEAK: "7", CPU_SECONDS: "0.5",
                                      WALL_SECONDS: "0.25", OOM_KILLS: "0"}
    assert props["test_isolated_unmeasured"] == {WALL_SECONDS: "1.5", OOM_KILLS: "0"}


class _Report:
    def __init__(self, user_properties):
        self.nodeid = "t.py::test"
        self.user_properties = user_properties


def test_properties_and_reading_them_back():
    """``properties()``: units in the names, None figures left out, seconds to the
    microsecond; ``TestStats.from_report`` reads them back from tuples, or from lists and
    strings as a transport may leave them; the last entry of a name wins."""
    entries = properties(memory_peak=64 * MIB, cpu_seconds=1.23456789, wall_seconds=2.0,
                         oom_kills=1)
    assert entries == [(MEMORY_PEAK, 64 * MIB), (CPU_SECONDS, 1.234568),
                       (WALL_SECONDS, 2.0), (OOM_KILLS, 1)]
    assert properties(memory_peak=None, cpu_seconds=None, wall_seconds=0,
                      oom_kills=0) == [(WALL_SECONDS, 0), (OOM_KILLS, 0)]
    stats = TestStats.from_report(_Report([("other", "x"), *entries]))
    assert (stats.memory_peak, stats.cpu_seconds, stats.wall_seconds, stats.oom_kills) == (
        64 * MIB, 1.234568, 2.0, 1)
    stats = TestStats.from_report(_Report([[WALL_SECONDS, "0.5"], [WALL_SECONDS, "0.75"],
                                           [MEMORY_PEAK, "1024"]]))
    assert (stats.memory_peak, stats.cpu_seconds, stats.wall_seconds, stats.oom_kills) == (
        1024, None, 0.75, 0)
    assert TestStats.from_report(_Report([("other", 1)])) is None


@pytest.mark.parametrize("keys, message", [
    ({"memory_peak": -1}, "nsbox_memory_peak_bytes=-1: must be a finite number, 0 or more"),
    ({"cpu_seconds": float("nan")}, "nsbox_cpu_seconds=nan: must be a finite number, 0 or "
                                    "more"),
    ({"wall_seconds": float("inf")}, "nsbox_wall_seconds=inf: must be a finite number, 0 or "
                                     "more"),
    ({"oom_kills": -2}, "nsbox_oom_kills=-2: must be a finite number, 0 or more"),
])
def test_properties_refuses_impossible_figures(keys, message):
    """A negative or non-finite figure is a caller's bug: ``ValueError`` naming it."""
    figures = {"memory_peak": 1, "cpu_seconds": 1.0, "wall_seconds": 1.0, "oom_kills": 0}
    with pytest.raises(ValueError) as info:
        properties(**{**figures, **keys})
    assert str(info.value) == message


@pytest.mark.parametrize("entry, message", [
    ((MEMORY_PEAK, "lots"), "t.py::test: property nsbox_memory_peak_bytes='lots' is not an "
                            "int of 0 or more"),
    ((OOM_KILLS, -1), "t.py::test: property nsbox_oom_kills=-1 is not an int of 0 or more"),
    ((CPU_SECONDS, True), "t.py::test: property nsbox_cpu_seconds=True is not a float of 0 "
                          "or more"),
])
def test_reading_back_names_a_bad_property(entry, message):
    """A figure that is not a number of its kind is a ``ValueError`` naming the test and
    the property (the plugin shows it at the end instead of a row)."""
    with pytest.raises(ValueError) as info:
        TestStats.from_report(_Report([(WALL_SECONDS, 1.0), entry]))
    assert str(info.value) == message


def test_table_header_and_empty_table():
    """The terminal lines without a session: the header says how many of how many and
    the order; no rows says no test used a box."""
    rows = sorted([TestStats("a", 10 * MIB, 0.5, 1.0, 0), TestStats("b", None, 2.0, 1.0, 0),
                   TestStats("c", 20 * MIB, 0.1, 1.0, 3)], key=TestStats.sort_key)
    assert table(rows, 2) == [
        "the 2 heaviest of 3 tests with boxes, sorted by peak memory (largest box), then "
        "CPU seconds",
        "peak memory  CPU s  wall s  OOM kills  test",
        "   20.0 MiB   0.10    1.00          3  c",
        "   10.0 MiB   0.50    1.00          0  a"]
    assert table(rows, 0)[-1] == "          -   2.00    1.00          0  b"
    assert table([], 10) == ["no test used a box"]
