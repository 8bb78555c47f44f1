"""Per-test resource figures: ``pytest --nsbox-stats[=PATH.html]``.

Each test that ran boxes (``nsbox``, ``nsbox_factory``) gets four figures, as
``user_properties`` of its teardown report, which pytest's JUnit XML writes as
``<property>`` elements (``_pytest/junitxml.py``, ``LogXML.finalize``) and pytest-xdist
carries from its workers to the controller with the report:

- ``nsbox_memory_peak_bytes``: the largest peak of the test's boxes, in bytes: the
  figure a box's ``memory=`` key is compared with (the box cgroup's
  ``memory.max_usage_in_bytes`` on v1, ``memory.peak`` on v2; left out where the kernel
  does not measure it);
- ``nsbox_cpu_seconds``: CPU time of all its boxes' processes, user plus system, summed;
- ``nsbox_wall_seconds``: the duration of the test's call phase (0 when it did not run);
- ``nsbox_oom_kills``: processes of its boxes the kernel's OOM killer killed, summed.

An isolated test's figures are its box's, attached by the isolation code through
``properties()``. A test without boxes gets no figures and is not in the table.

At the end the terminal shows the section ``nsbox stats``: the heaviest tests (ini
``nsbox_stats_top``, default 10) by peak memory, then CPU seconds. The table is built
from the reports (``pytest_runtest_logreport``), so under ``-n`` the controller shows
every worker's tests. ``--nsbox-stats=PATH.html`` also writes a self-contained page
(inline SVG bar charts of every test's peak memory and CPU seconds, and the table; no
script, nothing fetched). Without ``--nsbox-stats`` none of the per-test hooks is
registered, so a session pays nothing for this module.
"""
from __future__ import annotations

import math
import os
from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .runtime.box import Box

MEMORY_PEAK = "nsbox_memory_peak_bytes"
CPU_SECONDS = "nsbox_cpu_seconds"
WALL_SECONDS = "nsbox_wall_seconds"
OOM_KILLS = "nsbox_oom_kills"
NAMES = (MEMORY_PEAK, CPU_SECONDS, WALL_SECONDS, OOM_KILLS)
PLUGIN_NAME = "nsbox-teststats"
DEFAULT_TOP = 10
HTML_SUFFIXES = (".html", ".htm")
HELP_STATS = ("at the end, show the heaviest tests with boxes (peak memory, CPU seconds, wall "
              "seconds, OOM kills) and add these figures to JUnit XML as properties; "
              "--nsbox-stats=PATH.html also writes a page with per-test memory/CPU charts")
HELP_TOP = (f"rows of the --nsbox-stats table (default {DEFAULT_TOP}; 0: every test "
            f"with boxes)")

call_duration_key = pytest.StashKey[float]()


def properties(*, memory_peak: int | None, cpu_seconds: float | None, wall_seconds: float,
               oom_kills: int) -> list[tuple[str, object]]:
    """The ``user_properties`` entries of one test's figures, to append to its teardown
    report: ``[(name, value), ...]`` with the names above (units in the name: bytes,
    seconds, a count). ``memory_peak`` (bytes) and ``cpu_seconds`` may be None where not
    measured: that entry is left out. Seconds are rounded to the microsecond.

    Append them to ``report.user_properties`` of the teardown report, e.g. in a
    ``pytest_runtest_makereport`` wrapper (``Collector``'s runs outermost and then adds
    nothing to a report that already has figures), or before ``pytest_runtest_logreport``
    where reports are made elsewhere. Raises ``ValueError`` for a negative or non-finite
    figure (naming it)."""
    entries: list[tuple[str, object]] = []
    if memory_peak is not None:
        entries.append((MEMORY_PEAK, int(_checked(MEMORY_PEAK, memory_peak))))
    if cpu_seconds is not None:
        entries.append((CPU_SECONDS, round(_checked(CPU_SECONDS, cpu_seconds), 6)))
    entries.append((WALL_SECONDS, round(_checked(WALL_SECONDS, wall_seconds), 6)))
    entries.append((OOM_KILLS, int(_checked(OOM_KILLS, oom_kills))))
    return entries


def _checked(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r}: must be a finite number, 0 or more")
    return value


class TestStats:
    """One test's figures as its teardown report carries them (``from_report``): bytes,
    seconds, a count; None where not measured. (A plain class: a dataclass would cost
    every session a millisecond at import.)"""

    __test__ = False  # not a pytest test class, whatever its name
    __slots__ = ("nodeid", "memory_peak", "cpu_seconds", "wall_seconds", "oom_kills")

    def __init__(self, nodeid: str, memory_peak: int | None, cpu_seconds: float | None,
                 wall_seconds: float, oom_kills: int) -> None:
        self.nodeid = nodeid
        self.memory_peak = memory_peak
        self.cpu_seconds = cpu_seconds
        self.wall_seconds = wall_seconds
        self.oom_kills = oom_kills

    def __repr__(self) -> str:
        figures = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"TestStats({figures})"

    @classmethod
    def from_report(cls, report: pytest.TestReport) -> TestStats | None:
        """The figures of ``report.user_properties`` (the last entry of each name wins),
        or None when it carries none. Raises ``ValueError`` naming the property whose
        value is not a number of its kind."""
        found: dict[str, object] = {}
        for entry in report.user_properties:
            name, value = entry  # a tuple here, a list after some transports
            if name in NAMES:
                found[name] = value
        if WALL_SECONDS not in found:
            return None

        def number(name: str, kind: type[int] | type[float]) -> Any:
            value = found[name]
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                try:
                    return kind(_checked(name, kind(value)))
                except ValueError:
                    pass
            raise ValueError(f"{report.nodeid}: property {name}={value!r} is not "
                             f"a{'n' if kind is int else ''} {kind.__name__} of 0 or more")

        return cls(nodeid=report.nodeid,
                   memory_peak=number(MEMORY_PEAK, int) if MEMORY_PEAK in found else None,
                   cpu_seconds=number(CPU_SECONDS, float) if CPU_SECONDS in found else None,
                   wall_seconds=number(WALL_SECONDS, float),
                   oom_kills=number(OOM_KILLS, int) if OOM_KILLS in found else 0)

    def sort_key(self) -> tuple[int, float, str]:
        """Heaviest first: peak memory (unmeasured last), then CPU seconds."""
        return (-(self.memory_peak if self.memory_peak is not None else -1),
                -(self.cpu_seconds or 0.0), self.nodeid)


def box_properties(boxes: Iterable[Box], wall_seconds: float) -> list[tuple[str, object]]:
    """``properties()`` of a test's boxes: the largest peak, CPU seconds and OOM kills
    summed; a box whose figures cannot be read (``Box.stats()`` raised) adds nothing."""
    from .errors import NsboxError

    peaks: list[int] = []
    cpu: float | None = None
    oom = 0
    for box in boxes:
        try:
            stats = box.stats()
        except NsboxError:
            continue
        if stats.memory_peak is not None:
            peaks.append(stats.memory_peak)
        cpu = (cpu or 0.0) + stats.cpu_seconds
        oom += stats.oom_kills
    return properties(memory_peak=max(peaks) if peaks else None, cpu_seconds=cpu,
                      wall_seconds=wall_seconds, oom_kills=oom)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nsbox", "per-test containers (pytest-nsbox)")
    group.addoption("--nsbox-stats", nargs="?", const="", default=None, metavar="PATH.html",
                    help=HELP_STATS)
    parser.addini("nsbox_stats_top", HELP_TOP, default=str(DEFAULT_TOP))


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("nsbox_stats", None)
    if value is None:
        return
    config.pluginmanager.register(
        Collector(top=_top(str(config.getini("nsbox_stats_top"))), page=_page_path(value),
                  controller=not hasattr(config, "workerinput")),
        PLUGIN_NAME)


def _top(text: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise pytest.UsageError(f"ini nsbox_stats_top={text!r}: not a number of rows; "
                                f"use e.g. nsbox_stats_top = 20 (0: every test)")
    return int(text)


def _page_path(value: str) -> str | None:
    """The page's path from ``--nsbox-stats=VALUE``, or None for the flag alone."""
    if not value:
        return None
    if not value.lower().endswith(HTML_SUFFIXES):
        raise pytest.UsageError(
            f"--nsbox-stats={value}: the page's path must end in .html (e.g. "
            f"--nsbox-stats=stats.html); to give test paths after the flag alone, put "
            f"--nsbox-stats after them")
    path = os.path.abspath(value)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise pytest.UsageError(f"--nsbox-stats={value}: no directory {parent} to write "
                                f"the page in")
    return path


class Collector:
    """The session's hooks while ``--nsbox-stats`` is on. On a pytest process that runs
    tests: the boxes of each test (``pytest_nsbox_box_finished``, by ``box.group``, the
    test's node id), read at its teardown report (``box_properties``). On the process
    that reports (the only one without xdist, the controller with it): every teardown
    report's figures, the table and the page."""

    def __init__(self, *, top: int, page: str | None, controller: bool) -> None:
        self.top = top
        self.page = page
        self.controller = controller
        self.boxes: dict[str, list[Box]] = {}
        self.rows: dict[str, TestStats] = {}
        self.problems: list[str] = []
        self.page_written: str | None = None

    def pytest_nsbox_box_finished(self, box: Box) -> None:
        self.boxes.setdefault(str(box.group), []).append(box)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Figures of the test's boxes on its teardown report (closed by then: their
        final stats). Outermost wrapper, so a report that already carries figures (an
        isolated test's, attached by the isolation code) keeps them."""
        report = yield
        if report.when == "call":
            item.stash[call_duration_key] = report.duration
        elif report.when == "teardown":
            boxes = self.boxes.pop(item.nodeid, None)
            if boxes and not any(entry[0] in NAMES for entry in report.user_properties):
                report.user_properties.extend(
                    box_properties(boxes, item.stash.get(call_duration_key, 0.0)))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown" or not self.controller:
            return
        try:
            stats = TestStats.from_report(report)
        except ValueError as exc:
            self.problems.append(str(exc))
            return
        if stats is not None:
            self.rows[report.nodeid] = stats

    def ordered(self) -> list[TestStats]:
        return sorted(self.rows.values(), key=TestStats.sort_key)

    def pytest_sessionfinish(self) -> None:
        if self.page is None or not self.controller:
            return
        try:
            with open(self.page, "w", encoding="utf-8") as out:
                out.write(html_page(self.ordered()))
        except OSError as exc:
            self.problems.append(f"cannot write {self.page}: {exc.strerror or exc}")
        else:
            self.page_written = self.page

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.controller:
            return
        terminalreporter.section("nsbox stats")
        for line in table(self.ordered(), self.top):
            terminalreporter.write_line(line)
        if self.page_written:
            terminalreporter.write_line(f"page with charts: {self.page_written}")
        for problem in self.problems:
            terminalreporter.write_line(f"nsbox stats: {problem}", red=True)


COLUMNS = ("peak memory", "CPU s", "wall s", "OOM kills")


def _cells(row: TestStats) -> tuple[str, str, str, str]:
    from .units import format_size

    return (format_size(row.memory_peak) if row.memory_peak is not None else "-",
            f"{row.cpu_seconds:.2f}" if row.cpu_seconds is not None else "-",
            f"{row.wall_seconds:.2f}", str(row.oom_kills))


def table(rows: Sequence[TestStats], top: int) -> list[str]:
    """The terminal lines: a header saying how many rows of how many and their order,
    then one line per test (the ``top`` first of ``rows``; 0: all), figures right-aligned
    under the column names, the node id last."""
    if not rows:
        return ["no test used a box"]
    shown = list(rows[:top] if top else rows)
    which = f"all {len(rows)}" if len(shown) == len(rows) else f"the {len(shown)} heaviest of"
    total = "" if len(shown) == len(rows) else f" {len(rows)}"
    lines = [f"{which}{total} tests with boxes, sorted by peak memory (largest box), "
             f"then CPU seconds"]
    cells = [_cells(row) for row in shown]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, name in enumerate(COLUMNS)]
    lines.append("  ".join(name.rjust(w) for name, w in zip(COLUMNS, widths)) + "  test")
    for row, cell in zip(shown, cells):
        lines.append("  ".join(c.rjust(w) for c, w in zip(cell, widths)) + f"  {row.nodeid}")
    return lines


# -- the page ---------------------------------------------------------------------------------

BAR_HEIGHT = 18
LABEL_WIDTH = 520
BAR_WIDTH = 360
PAGE_STYLE = """
body { font: 14px sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right; }
td.test, th.test { text-align: left; font-family: monospace; }
tr:nth-child(even) { background: #f3f3f3; }
svg text { font: 12px sans-serif; } svg text.test { font-family: monospace; }
"""


def _esc(text: str) -> str:
    from html import escape

    return escape(text, quote=True)


def bar_chart(title: str, rows: Sequence[TestStats], values: Sequence[float | None],
              labels: Sequence[str], colour: str) -> str:
    """An inline SVG of horizontal bars, one per test (in ``rows`` order), scaled to the
    largest value; an unmeasured value (None) gets no bar and the label ``-``."""
    largest = max((v for v in values if v is not None), default=0.0) or 1.0
    height = BAR_HEIGHT * len(rows) + 4
    width = LABEL_WIDTH + BAR_WIDTH + 110
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}"><title>{_esc(title)}</title>']
    for i, (row, value, label) in enumerate(zip(rows, values, labels)):
        y = i * BAR_HEIGHT + 2
        name = row.nodeid if len(row.nodeid) <= 75 else "..." + row.nodeid[-72:]
        parts.append(f'<text class="test" x="{LABEL_WIDTH - 6}" y="{y + 13}" '
                     f'text-anchor="end"><title>{_esc(row.nodeid)}</title>{_esc(name)}</text>')
        length = 0.0 if value is None else BAR_WIDTH * value / largest
        parts.append(f'<rect x="{LABEL_WIDTH}" y="{y + 2}" width="{length:.1f}" '
                     f'height="{BAR_HEIGHT - 4}" fill="{colour}"/>')
        parts.append(f'<text x="{LABEL_WIDTH + length + 6:.1f}" y="{y + 13}">'
                     f'{_esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_page(rows: Sequence[TestStats]) -> str:
    """A self-contained HTML page (inline CSS and SVG, no script, no external resource)
    of every test in ``rows``: a bar chart of peak memory (in ``rows`` order), one of CPU
    seconds (most first), and the table of all four figures, in ``rows`` order."""
    cells = [_cells(row) for row in rows]
    head = "".join(f"<th>{_esc(name)}</th>" for name in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cell)
        + f'<td class="test">{_esc(row.nodeid)}</td></tr>' for row, cell in zip(rows, cells))
    if rows:
        by_cpu = sorted(rows, key=lambda r: (-(r.cpu_seconds or 0.0), r.nodeid))
        charts = (
            "<h2>Peak memory (largest box)</h2>"
            + bar_chart("peak memory per test", rows, [r.memory_peak for r in rows],
                        [c[0] for c in cells], "#4a7fb5")
            + "<h2>CPU seconds (all boxes)</h2>"
            + bar_chart("CPU seconds per test", by_cpu, [r.cpu_seconds for r in by_cpu],
                        [_cells(r)[1] for r in by_cpu], "#c8553d"))
    else:
        charts = "<p>No test used a box.</p>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>nsbox stats</title><style>{PAGE_STYLE}</style></head><body>"
            f"<h1>nsbox stats: {len(rows)} tests with boxes, heaviest first</h1>{charts}"
            f"<h2>All figures</h2><table><tr>{head}<th class=\"test\">test</th></tr>"
            f"{body}</table></body></html>\n")
