"""Per-test resource figures and pictures: ``pytest --nsbox-stats[=PATH.html]``.

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

While a box runs, a ``Sampler`` (a thread of the pytest process) reads its cgroup's
memory, CPU time and OOM kill count every 20 ms; when it holds ``MAX_SAMPLES`` (200)
readings it merges them pairwise and reads half as often, so a test of any length keeps
between 100 and 200. A reading's memory is the most the interval up to it saw (the
cgroup's peak where that rose), and a merged reading keeps the larger: peaks survive.
Each box's ``Series`` goes, as JSON data, into the attribute ``nsbox_series`` of the
test's teardown report: pytest's ``_report_to_json`` keeps a report's extra attributes, so
pytest-xdist brings it to the controller, and JUnit XML, which writes only
``user_properties``, stays as it was.

An isolated test's figures are its box's, attached by the isolation code through
``properties()``; its series through ``sampler()``, started on the test's cgroup. A test
without boxes gets no figures and is not in the table.

At the end the terminal shows the section ``nsbox stats``: the heaviest tests (ini
``nsbox_stats_top``, default 10) by peak memory, then CPU seconds. The table is built
from the reports (``pytest_runtest_logreport``), so under ``-n`` the controller shows
every worker's tests. ``--nsbox-stats=PATH.html`` also writes a self-contained page: every
failed test, the table, bar charts of every test's peak memory and CPU seconds, and per
test a chart of memory (against its limit) and CPU over time with its OOM kills marked
(inline SVG and CSS; no script, nothing fetched). Where pytest-html writes a report
(``--html``), each test's chart goes into it as an ``html`` extra (pytest-html's
``extras``); pytest-html stays optional. Without ``--nsbox-stats`` none of the per-test
hooks is registered, so a session pays nothing for this module.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from .cgroups.base import Stats
    from .runtime.box import Box

MEMORY_PEAK = "nsbox_memory_peak_bytes"
CPU_SECONDS = "nsbox_cpu_seconds"
WALL_SECONDS = "nsbox_wall_seconds"
OOM_KILLS = "nsbox_oom_kills"
NAMES = (MEMORY_PEAK, CPU_SECONDS, WALL_SECONDS, OOM_KILLS)
#: The teardown report's attribute holding the test's series: ``[Series.to_json(), ...]``.
SERIES_ATTR = "nsbox_series"
PLUGIN_NAME = "nsbox-teststats"
#: Set (to ``1``) in an isolation worker and its tests (``isolate.INNER_ENV``): a pytest
#: given this process's arguments, whose isolated tests' figures this process takes.
ISOLATED_ENV = "NSBOX_ISOLATED"
DEFAULT_TOP = 10
#: Readings one ``Sampler`` keeps at most; when full, pairs are merged (half as many).
MAX_SAMPLES = 200
#: Seconds between two readings until the first merge (each merge doubles it).
FIRST_INTERVAL = 0.02
#: How long ``Sampler.stop`` waits for its thread's reading in progress, in seconds.
JOIN_TIMEOUT = 5.0
#: Over-time charts on the page: every failed test's and this many of the heaviest others.
PAGE_CHARTS = 100
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


# -- over time: series and their sampler ---------------------------------------------------

class Series:
    """One cgroup's readings over time (a box's, or an isolated test's): ``times`` in
    seconds since ``start`` (a ``time.time()``, so series of one test line up), and per
    reading ``memory`` (the most bytes charged, page cache included, in the interval
    that ends at the reading: the charge then, or the cgroup's peak where that rose
    since the reading before, so a spike between two readings is kept; None where the
    memory controller is absent), ``cpu`` (CPU seconds used so far, user plus system)
    and ``oom`` (processes the OOM killer killed so far, a count). ``limit`` is the
    memory limit in bytes (None: unlimited). The readings are ``Stats`` fields: cgroup
    v1 ``memory.usage_in_bytes``, ``memory.max_usage_in_bytes``, ``cpuacct.usage``,
    ``memory.oom_control``; v2 ``memory.current``, ``memory.peak``, ``cpu.stat``,
    ``memory.events``."""

    __slots__ = ("name", "start", "limit", "times", "memory", "cpu", "oom")

    def __init__(self, name: str, start: float, limit: int | None, times: list[float],
                 memory: list[int | None], cpu: list[float], oom: list[int]) -> None:
        self.name = name
        self.start = start
        self.limit = limit
        self.times = times
        self.memory = memory
        self.cpu = cpu
        self.oom = oom

    def __repr__(self) -> str:
        return (f"Series({self.name!r}, {len(self.times)} readings over "
                f"{self.times[-1] if self.times else 0:.3f} s, limit={self.limit!r})")

    def oom_marks(self) -> list[tuple[float, int]]:
        """``(seconds, kills)`` where the OOM kill count rose since the reading before:
        the first reading is the count the series started from."""
        return [(self.times[i], self.oom[i] - self.oom[i - 1])
                for i in range(1, len(self.oom)) if self.oom[i] > self.oom[i - 1]]

    def cpu_rates(self) -> list[tuple[float, float, float]]:
        """``(from s, to s, cores)`` between consecutive readings: CPU seconds used over
        seconds passed (1.0 = one core busy all the time)."""
        return [(self.times[i - 1], self.times[i],
                 max(0.0, self.cpu[i] - self.cpu[i - 1]) / (self.times[i] - self.times[i - 1]))
                for i in range(1, len(self.times)) if self.times[i] > self.times[i - 1]]

    def to_json(self) -> dict[str, object]:
        """Plain JSON data (what the report carries): ``t`` in milliseconds, ``memory``
        in bytes, ``cpu`` in microseconds, ``oom`` counts, ``limit`` bytes or null."""
        return {"name": self.name, "start": round(self.start, 6), "limit": self.limit,
                "t": [round(t * 1000) for t in self.times], "memory": list(self.memory),
                "cpu": [round(c * 1e6) for c in self.cpu], "oom": list(self.oom)}

    @classmethod
    def from_json(cls, data: object) -> Series:
        """The series ``to_json`` made. Raises ``ValueError`` naming the field that is
        missing or not what ``to_json`` writes."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a series is a JSON object, not {data!r:.60}")
        name, start, limit = data.get("name"), data.get("start"), data.get("limit")
        if not isinstance(name, str):
            raise ValueError(f"series name={name!r:.60}: not a string")
        if not _number(start):
            raise ValueError(f"series {name!r}: start={start!r:.60}: not a time")
        if limit is not None and not _count(limit):
            raise ValueError(f"series {name!r}: limit={limit!r:.60}: not a number of bytes")
        columns = {}
        for key, ok in (("t", _count), ("memory", lambda v: v is None or _count(v)),
                        ("cpu", _count), ("oom", _count)):
            values = data.get(key)
            if not isinstance(values, list) or not all(ok(v) for v in values):
                raise ValueError(f"series {name!r}: {key}={values!r:.60}: not a list of "
                                 f"whole numbers of 0 or more")
            columns[key] = values
        if len({len(v) for v in columns.values()}) != 1:
            raise ValueError(f"series {name!r}: t, memory, cpu and oom differ in length")
        return cls(name=name, start=float(start), limit=limit,  # type: ignore[arg-type]
                   times=[t / 1000 for t in columns["t"]], memory=columns["memory"],
                   cpu=[c / 1e6 for c in columns["cpu"]], oom=columns["oom"])


def _number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def report_series(report: pytest.TestReport) -> list[Series]:
    """The series a teardown report carries (``SERIES_ATTR``), none when it has none.
    Raises ``ValueError`` naming the test and what is wrong with the data."""
    data = getattr(report, SERIES_ATTR, None)
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"{report.nodeid}: {SERIES_ATTR} is not a list of series")
    try:
        return [Series.from_json(item) for item in data]
    except ValueError as exc:
        raise ValueError(f"{report.nodeid}: {SERIES_ATTR}: {exc}") from None


class Sampled(Protocol):
    """What a ``Sampler`` reads: a ``Box`` or a ``Cgroup``."""

    def stats(self) -> Stats: ...


class Sampler:
    """Reads ``source.stats()`` in a thread of this process while a box (or an isolated
    test's cgroup) runs: ``start()`` takes the first reading and starts the thread,
    ``stop()`` ends it, takes the last reading and returns the ``Series``.

    At most ``max_samples`` readings are kept (``MAX_SAMPLES``): when full, every pair of
    readings after the first becomes one (the later one's time, CPU and OOM count, the
    larger memory figure) and the thread reads half as often; it starts every
    ``interval`` seconds (``FIRST_INTERVAL``). Reading ends, quietly, when the source is
    gone: ``stats()`` raises (``NsboxError``, ``OSError``), a ``Box`` is ``closed`` (after
    one last reading, its final figures), or the CPU time goes down (a removed cgroup
    reads as zero). ``done(series)`` is called
    once, by ``stop()``. Raises ``ValueError`` for fewer than 4 samples or an interval
    that is not a positive number of seconds."""

    def __init__(self, source: Sampled, *, name: str = "box", max_samples: int = MAX_SAMPLES,
                 interval: float = FIRST_INTERVAL,
                 done: Callable[[Series], object] | None = None) -> None:
        if max_samples < 4:
            raise ValueError(f"max_samples={max_samples!r}: keep at least 4 readings")
        if not (isinstance(interval, (int, float)) and math.isfinite(interval)
                and interval > 0):
            raise ValueError(f"interval={interval!r}: must be a positive number of seconds")
        self.source = source
        self.name = name
        self.max_samples = max_samples
        self.interval = float(interval)
        self._done = done
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False
        self._t0 = 0.0
        self._start = 0.0
        self._limit: int | None = None
        self._peak = 0
        self._times: list[float] = []
        self._memory: list[int | None] = []
        self._cpu: list[float] = []
        self._oom: list[int] = []
        self._series: Series | None = None

    def __repr__(self) -> str:
        return f"<Sampler {self.name!r}: {len(self._times)} readings>"

    def start(self) -> Sampler:
        """The first reading, then the thread (a daemon: it never holds up the exit).
        Returns the sampler. Raises ``RuntimeError`` when it was started before."""
        if self._t0:
            raise RuntimeError(f"sampler {self.name!r} was started before")
        self._t0, self._start = time.monotonic(), time.time()
        if not self._read():
            self._ended = True
            return self
        thread = threading.Thread(target=self._run, name=f"nsbox-sampler {self.name}",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the first and last readings remain
            return self
        self._thread = thread
        return self

    def stop(self) -> Series:
        """End the readings (the last one taken now) and return the series; a second
        call returns the same series. ``done`` hears of it first."""
        if self._series is not None:
            return self._series
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
        if self._t0 and not self._ended:
            self._read()
        with self._lock:
            self._ended = True
            self._series = Series(self.name, self._start, self._limit, list(self._times),
                                  list(self._memory), list(self._cpu), list(self._oom))
        if self._done is not None:
            self._done(self._series)
        return self._series

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            if not self._read():
                self._ended = True
                return

    def _read(self) -> bool:
        """One reading; False when the source is gone. A closed ``Box`` gives one last
        reading, its final ``stats()`` (taken as it closed), so kills in its last moments
        are in the series too."""
        from .errors import NsboxError

        try:
            closed = bool(getattr(self.source, "closed", False))
            stats = self.source.stats()
        except (NsboxError, OSError):
            return False
        now = time.monotonic() - self._t0
        with self._lock:
            if self._ended or (self._cpu and stats.cpu_seconds < self._cpu[-1]):
                return False
            self._limit = stats.memory_limit
            memory = stats.memory_current
            if stats.memory_peak is not None and stats.memory_peak > self._peak:
                self._peak = stats.memory_peak  # reached since the reading before
                memory = max(memory or 0, stats.memory_peak)
            self._times.append(now)
            self._memory.append(memory)
            self._cpu.append(stats.cpu_seconds)
            self._oom.append(stats.oom_kills)
            if len(self._times) >= self.max_samples:
                self._halve()
        return not closed

    def _halve(self) -> None:
        """Keep the first reading; merge each following pair into its later reading with
        the larger memory figure; read half as often from now on."""
        def merged(i: int) -> int | None:
            pair = [m for m in self._memory[i:i + 2] if m is not None]
            return max(pair) if pair else None

        n = len(self._times)
        later = list(range(2, n, 2)) + ([n - 1] if n % 2 == 0 else [])
        firsts = list(range(1, n, 2))
        self._memory = self._memory[:1] + [merged(i) for i in firsts]
        self._times = self._times[:1] + [self._times[i] for i in later]
        self._cpu = self._cpu[:1] + [self._cpu[i] for i in later]
        self._oom = self._oom[:1] + [self._oom[i] for i in later]
        self.interval *= 2


def sampler(item: pytest.Item, source: Sampled, name: str = "isolated test"
            ) -> Sampler | None:
    """For code that runs a test's processes in a cgroup of its own (the isolation
    worker): with ``--nsbox-stats``, a started ``Sampler`` of ``source`` whose series,
    at ``stop()``, goes on ``item``'s teardown report (``SERIES_ATTR``, when it is
    logged in this process); without the option, None. Call ``stop()`` while the
    cgroup still exists (before it is removed)."""
    collector = item.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if not isinstance(collector, Collector):
        return None
    nodeid = item.nodeid
    return Sampler(source, name=name,
                   done=lambda series: collector.add_series(nodeid, series)).start()


# -- the session's hooks ---------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nsbox", "per-test containers (pytest-nsbox)")
    group.addoption("--nsbox-stats", nargs="?", const="", default=None, metavar="PATH.html",
                    help=HELP_STATS)
    parser.addini("nsbox_stats_top", HELP_TOP, default=str(DEFAULT_TOP))


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("nsbox_stats", None)
    if value is None or os.environ.get(ISOLATED_ENV) == "1":
        return
    controller = not hasattr(config, "workerinput")
    config.pluginmanager.register(
        Collector(top=_top(str(config.getini("nsbox_stats_top"))), page=_page_path(value),
                  controller=controller,
                  html_report=controller and bool(config.getoption("htmlpath", None))),
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


def phase_outcome(report: pytest.TestReport) -> str:
    """One phase's outcome in pytest's summary words: ``failed`` (the call), ``error``
    (setup or teardown), ``skipped``, ``xfailed``, ``xpassed`` or ``passed``."""
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    if report.when == "call" and hasattr(report, "wasxfail"):
        return "xpassed"
    return "passed"


FAILED = ("failed", "error")


class Collector:
    """The session's hooks while ``--nsbox-stats`` is on. On a pytest process that runs
    tests: a ``Sampler`` per box while it runs (``pytest_nsbox_box_started`` to
    ``pytest_nsbox_box_finished``), the boxes of each test (by ``box.group``, the test's
    node id), read at its teardown report (``box_properties``), and the test's series put
    on that report as it is logged. On the process that reports (the only one without
    xdist, the controller with it): every test's outcome, every teardown report's figures
    and series, the table, the page and pytest-html's extras."""

    def __init__(self, *, top: int, page: str | None, controller: bool,
                 html_report: bool = False) -> None:
        self.top = top
        self.page = page
        self.controller = controller
        self.html_report = html_report
        self.boxes: dict[str, list[Box]] = {}
        self.samplers: dict[int, Sampler] = {}
        self.series: dict[str, list[Series]] = {}  # by node id, until its teardown report
        self.rows: dict[str, TestStats] = {}
        self.timelines: dict[str, list[Series]] = {}
        self.outcomes: dict[str, str] = {}
        self.problems: list[str] = []
        self.page_written: str | None = None

    def add_series(self, nodeid: str, series: Series) -> None:
        """``series`` goes on the teardown report of test ``nodeid``."""
        self.series.setdefault(nodeid, []).append(series)

    def pytest_nsbox_box_started(self, box: Box) -> None:
        self.samplers[id(box)] = Sampler(box, name=box.name).start()

    def pytest_nsbox_box_finished(self, box: Box) -> None:
        self.boxes.setdefault(str(box.group), []).append(box)
        sampler = self.samplers.pop(id(box), None)
        if sampler is not None:  # the box is still running: its last reading is taken
            self.add_series(str(box.group), sampler.stop())

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

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """First of every ``pytest_runtest_logreport``: the test's series go on its
        teardown report before pytest-xdist ships it (``xdist/remote.py``) or anyone
        reads it; then, on the reporting process, the report is read."""
        if report.when == "teardown":
            series = self.series.pop(report.nodeid, None)
            if series and getattr(report, SERIES_ATTR, None) is None:
                setattr(report, SERIES_ATTR, [s.to_json() for s in series])
        if not self.controller:
            return
        outcome = phase_outcome(report)
        if self.outcomes.get(report.nodeid, "passed") == "passed":
            self.outcomes[report.nodeid] = outcome
        if report.when != "teardown":
            return
        try:
            timeline = report_series(report)
        except ValueError as exc:
            self.problems.append(str(exc))
            timeline = []
        if timeline:
            self.timelines[report.nodeid] = timeline
            if self.html_report:
                self._html_extra(report, timeline)
        try:
            stats = TestStats.from_report(report)
        except ValueError as exc:
            self.problems.append(str(exc))
            return
        if stats is not None:
            self.rows[report.nodeid] = stats

    def _html_extra(self, report: pytest.TestReport, timeline: Sequence[Series]) -> None:
        """The test's chart as a pytest-html ``html`` extra of its teardown report
        (pytest-html's ``pytest_runtest_logreport`` runs last and reads every phase's
        ``extras``); nothing where pytest-html is not installed."""
        import importlib

        try:
            extras = importlib.import_module("pytest_html.extras")
        except ImportError:
            self.html_report = False
            return
        chart = timeline_chart(timeline, f"memory and CPU of {report.nodeid} over time")
        report.extras = [*getattr(report, "extras", []),  # type: ignore[attr-defined]
                         extras.html(f'<div class="nsbox-stats">{chart}</div>')]

    def ordered(self) -> list[TestStats]:
        return sorted(self.rows.values(), key=TestStats.sort_key)

    def failed(self) -> list[str]:
        """Node ids of the tests that failed or errored, in the order they ran."""
        return [nodeid for nodeid, outcome in self.outcomes.items() if outcome in FAILED]

    def pytest_sessionfinish(self) -> None:
        for sampler in list(self.samplers.values()):  # boxes never finished (a crash)
            sampler.stop()
        self.samplers.clear()
        if self.page is None or not self.controller:
            return
        try:
            with open(self.page, "w", encoding="utf-8") as out:
                out.write(html_page(self.ordered(), timelines=self.timelines,
                                    outcomes=self.outcomes))
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


# -- the pictures ----------------------------------------------------------------------------

BAR_HEIGHT = 18
LABEL_WIDTH = 520
BAR_WIDTH = 360
#: The over-time chart: its size and its two panels' edges, in SVG pixels.
CHART_WIDTH = 640
CHART_HEIGHT = 250
PLOT_LEFT = 84
PLOT_RIGHT = 620
MEMORY_TOP = 34
MEMORY_BOTTOM = 144
CPU_TOP = 162
CPU_BOTTOM = 222
PALETTE = ("#4a7fb5", "#2a9d8f", "#8e6bb8", "#e09f3e", "#6c757d", "#b56576")
LIMIT_COLOUR = "#c8553d"
OOM_COLOUR = "#d00000"
PAGE_STYLE = """
body { font: 14px sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
h3 { font-size: 1em; font-family: monospace; margin: 1.5em 0 0.3em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: right; }
td.test, th.test { text-align: left; font-family: monospace; }
tr:nth-child(even) { background: #f3f3f3; }
svg text { font: 12px sans-serif; } svg text.test { font-family: monospace; }
.failed, .error { color: #b00020; font-weight: bold; }
.outcome { font-family: sans-serif; font-size: 0.9em; margin-left: 0.5em; }
p.figures { margin: 0 0 0.3em; color: #555; }
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


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


def _points(pairs: Iterable[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in pairs)


def timeline_chart(series: Sequence[Series], title: str) -> str:
    """An inline SVG (``CHART_WIDTH`` x ``CHART_HEIGHT``, presentation attributes only,
    so it looks the same on our page and in pytest-html's report) of one test's
    ``series`` on one time axis (seconds since the first series started): above, memory
    (a line per box, ``class="nsbox-memory"``) with each distinct memory limit as a
    dashed line (``nsbox-limit``) that sets the scale; below, CPU in cores (``nsbox-cpu``,
    steps between readings); every OOM kill a red line across both (``nsbox-oom``) with
    its count. A test with no readings gets a chart that says so."""
    from .units import format_size

    shown = sorted((s for s in series if s.times), key=lambda s: s.start)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="nsbox-timeline" role="img" '
             f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
             f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}"><title>{_esc(title)}</title>']
    for top, bottom in ((MEMORY_TOP, MEMORY_BOTTOM), (CPU_TOP, CPU_BOTTOM)):
        parts.append(f'<rect x="{PLOT_LEFT}" y="{top}" width="{PLOT_RIGHT - PLOT_LEFT}" '
                     f'height="{bottom - top}" fill="#fafafa" stroke="#bbb"/>')
    parts.append(f'<text x="{PLOT_LEFT}" y="{MEMORY_TOP - 6}" font-size="12">memory</text>')
    parts.append(f'<text x="{PLOT_LEFT}" y="{CPU_TOP - 5}" font-size="12">CPU (cores)</text>')
    if not shown:
        parts.append(f'<text x="{(PLOT_LEFT + PLOT_RIGHT) // 2}" y="{MEMORY_BOTTOM - 50}" '
                     f'text-anchor="middle" font-size="12">no readings</text></svg>')
        return "".join(parts)
    t0 = min(s.start for s in shown)
    span = max(max(s.start - t0 + s.times[-1] for s in shown), 1e-3)
    limited: dict[int, list[str]] = {}
    for s in shown:
        if s.limit is not None:
            limited.setdefault(s.limit, []).append(s.name)
    limits = sorted(limited)
    memory_top = max([m for s in shown for m in s.memory if m is not None] + limits,
                     default=0) * 1.08 or 1.0
    rates = {id(s): s.cpu_rates() for s in shown}
    cpu_top = max([r for found in rates.values() for _, _, r in found] + [0.01]) * 1.1

    def x(seconds: float) -> float:
        return PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * seconds / span

    def y_memory(value: float) -> float:
        return MEMORY_BOTTOM - (MEMORY_BOTTOM - MEMORY_TOP) * value / memory_top

    def y_cpu(value: float) -> float:
        return CPU_BOTTOM - (CPU_BOTTOM - CPU_TOP) * min(value, cpu_top) / cpu_top

    for fraction in (0.0, 0.5, 1.0):  # axes: memory, CPU and time, at 0, half, full
        ym, yc = y_memory(memory_top * fraction), y_cpu(cpu_top * fraction)
        parts.append(f'<text x="{PLOT_LEFT - 4}" y="{ym + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{_esc(format_size(int(memory_top * fraction)))}</text>')
        parts.append(f'<text x="{PLOT_LEFT - 4}" y="{yc + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{cpu_top * fraction:.2f}</text>')
        anchor = ("start", "middle", "end")[int(fraction * 2)]
        parts.append(f'<text x="{x(span * fraction):.1f}" y="{CPU_BOTTOM + 16}" '
                     f'text-anchor="{anchor}" font-size="11">{_seconds(span * fraction)}</text>')
    for limit in limits:
        y = y_memory(limit)
        whose = f" ({', '.join(limited[limit])})" if len(shown) > 1 else ""
        text = _esc(f"limit {format_size(limit)}{whose}")
        parts.append(f'<line class="nsbox-limit" x1="{PLOT_LEFT}" y1="{y:.1f}" '
                     f'x2="{PLOT_RIGHT}" y2="{y:.1f}" stroke="{LIMIT_COLOUR}" '
                     f'stroke-dasharray="6 3"><title>memory {text}</title></line>')
        parts.append(f'<text x="{PLOT_RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="{LIMIT_COLOUR}">{text}</text>')
    legend_x = PLOT_LEFT + 70
    for i, s in enumerate(shown):
        colour = PALETTE[i % len(PALETTE)]
        offset = s.start - t0
        memory = [(x(offset + t), y_memory(m)) for t, m in zip(s.times, s.memory)
                  if m is not None]
        cpu = [point for start, end, rate in rates[id(s)]
               for point in ((x(offset + start), y_cpu(rate)), (x(offset + end), y_cpu(rate)))]
        peak = max((m for m in s.memory if m is not None), default=None)
        label = f"{s.name}" + (f", peak reading {format_size(peak)}" if peak is not None else "")
        if memory:
            parts.append(f'<polyline class="nsbox-memory" points="{_points(memory)}" '
                         f'fill="none" stroke="{colour}" stroke-width="1.5">'
                         f'<title>memory of {_esc(label)}</title></polyline>')
        if cpu:
            parts.append(f'<polyline class="nsbox-cpu" points="{_points(cpu)}" fill="none" '
                         f'stroke="{colour}" stroke-width="1.2"><title>CPU of '
                         f'{_esc(s.name)}</title></polyline>')
        parts.append(f'<rect x="{legend_x}" y="{MEMORY_TOP - 15}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{legend_x + 14}" y="{MEMORY_TOP - 6}" '
                     f'font-size="11">{_esc(s.name)}</text>')
        legend_x += 24 + 7 * len(s.name)
        for seconds, kills in s.oom_marks():
            at = x(offset + seconds)
            what = f"{kills} process{'es' if kills > 1 else ''} of {s.name} killed for memory"
            parts.append(f'<line class="nsbox-oom" x1="{at:.1f}" y1="{MEMORY_TOP}" '
                         f'x2="{at:.1f}" y2="{CPU_BOTTOM}" stroke="{OOM_COLOUR}" '
                         f'stroke-width="2"><title>{_esc(what)} by '
                         f'{_seconds(offset + seconds)}</title></line>')
            parts.append(f'<text x="{at - 4:.1f}" y="{MEMORY_TOP + 28}" text-anchor="end" '
                         f'font-size="11" font-weight="bold" fill="{OOM_COLOUR}" '
                         f'stroke="#fff" stroke-width="3" paint-order="stroke">OOM kill'
                         f'{f" x{kills}" if kills > 1 else ""}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _anchor(index: int) -> str:
    return f"test-{index}"


def html_page(rows: Sequence[TestStats], *, timelines: Mapping[str, Sequence[Series]]
              | None = None, outcomes: Mapping[str, str] | None = None,
              charts: int = PAGE_CHARTS) -> str:
    """A self-contained HTML page (inline CSS and SVG, no script, no external resource):
    every failed test (``outcomes``: node id to ``phase_outcome`` words; failed and
    error count, boxes or not), the table of every test in ``rows`` (heaviest first,
    with its outcome), a bar chart of peak memory (in ``rows`` order) and one of CPU
    seconds (most first), and a ``timeline_chart`` of each failed test with series and of
    the ``charts`` heaviest others (``timelines``: node id to series)."""
    timelines = timelines or {}
    outcomes = outcomes or {}
    failed = [nodeid for nodeid, outcome in outcomes.items() if outcome in FAILED]
    order = [row.nodeid for row in rows] + [n for n in timelines if n not in
                                             {row.nodeid for row in rows}]
    charted = [n for n in order if n in timelines and n in failed]
    charted += [n for n in order if n in timelines and n not in failed][:charts]
    charted = [n for n in order if n in charted]
    anchors = {nodeid: _anchor(i) for i, nodeid in enumerate(charted)}

    def name(nodeid: str) -> str:
        text = _esc(nodeid)
        return f'<a href="#{anchors[nodeid]}">{text}</a>' if nodeid in anchors else text

    def outcome_of(nodeid: str) -> str:
        outcome = outcomes.get(nodeid, "")
        return f'<span class="outcome {outcome}">{_esc(outcome)}</span>' if outcome else ""

    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>nsbox stats</title><style>{PAGE_STYLE}</style></head><body>"
             f"<h1>nsbox stats: {len(rows)} tests with boxes, heaviest first"
             f"{f'; {len(failed)} failed or errored' if failed else ''}</h1>"]
    if failed:
        parts.append('<h2>Failed tests</h2><ul class="failed-tests">')
        parts += [f"<li>{name(nodeid)}{outcome_of(nodeid)}"
                  f"{'' if nodeid in timelines else ' (no box)'}</li>" for nodeid in failed]
        parts.append("</ul>")
    cells = [_cells(row) for row in rows]
    head = "".join(f"<th>{_esc(column)}</th>" for column in COLUMNS)
    parts.append(f"<h2>Heaviest tests</h2><table><tr><th>outcome</th>{head}"
                 f'<th class="test">test</th></tr>')
    parts += ["<tr><td>" + outcome_of(row.nodeid) + "</td>"
              + "".join(f"<td>{_esc(c)}</td>" for c in cell)
              + f'<td class="test">{name(row.nodeid)}</td></tr>'
              for row, cell in zip(rows, cells)]
    parts.append("</table>")
    if rows:
        by_cpu = sorted(rows, key=lambda r: (-(r.cpu_seconds or 0.0), r.nodeid))
        parts += ["<h2>Peak memory (largest box)</h2>",
                  bar_chart("peak memory per test", rows, [r.memory_peak for r in rows],
                            [c[0] for c in cells], "#4a7fb5"),
                  "<h2>CPU seconds (all boxes)</h2>",
                  bar_chart("CPU seconds per test", by_cpu, [r.cpu_seconds for r in by_cpu],
                            [_cells(r)[1] for r in by_cpu], "#c8553d")]
    else:
        parts.append("<p>No test used a box.</p>")
    if charted:
        left = len([n for n in timelines if n not in anchors])
        parts.append("<h2>Memory and CPU over time</h2>")
        if left:
            parts.append(f"<p>Charts of every failed test and the {charts} heaviest others; "
                         f"{left} lighter tests are in the table only.</p>")
        figures = {row.nodeid: cell for row, cell in zip(rows, cells)}
        for nodeid in charted:
            cell = figures.get(nodeid)
            line = (f"peak {cell[0]}, CPU {cell[1]} s, wall {cell[2]} s, OOM kills {cell[3]}"
                    if cell else "")
            parts.append(f'<section id="{anchors[nodeid]}" class="test-chart">'
                         f"<h3>{_esc(nodeid)}{outcome_of(nodeid)}</h3>"
                         f'<p class="figures">{_esc(line)}</p>'
                         + timeline_chart(timelines[nodeid],
                                          f"memory and CPU of {nodeid} over time")
                         + "</section>")
    parts.append("</body></html>\n")
    return "".join(parts)
