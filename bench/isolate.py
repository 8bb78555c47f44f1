"""Whole-test isolation against plain pytest and pytest-forked (issue 11, item 8).

Two generated suites of N tests each, in one rootdir:

- ``trivial``: ``def test_trivial(i): pass``, parametrized N times (figure 1);
- ``fixtures``: each test takes a function-scoped ``tmp_path`` and a session-scoped
  fixture (which makes a directory with ``tmp_path_factory`` and returns a random id), and
  writes into its ``tmp_path`` (figure 2).

Each is run as a whole pytest session in three modes: ``plain`` (no flag),
``isolated`` (``--nsbox-isolate``) and ``forked`` (pytest-forked's ``--forked``, where it
is installed), in rounds; each round runs every mode once, the order rotating, after one
warm-up session per mode on a single test (bytecode written, caches warm). The extra cost
per test of a mode in a round is ``(t_mode - t_plain) / N`` from whole-session wall
times, so whatever the mode costs anywhere (a worker's start, a second collection, the
test's own protocol) is counted; the figure is the median over rounds.

The suites' conftest also records, in the outer pytest process only, a
``time.monotonic()`` timestamp at ``pytest_runtest_logstart`` and ``..._logfinish`` of every
test (pytest-forked calls both in the parent; a mode that runs the protocol elsewhere
still logs them in the outer process, as xdist's controller does), and the session
fixture's id as each test's call report carries it back in ``user_properties``. From
those: the per-test distribution of the extra cost (the mode's logstart->logfinish minus
plain's, test by test), what the mode costs outside the tests (start-up, collection,
wind-down), and how often the session fixture was set up.

pytest-forked 1.7.5 marshals each report's ``__dict__``; from pytest 9.2 that holds the
structured ``_id`` (``_pytest.nodeid.NodeId``), which marshal refuses, so every test
"EXITED with status 3". The conftest wraps ``pytest_forked.serialize_report`` to send the
node id as text, as pytest's own ``_report_to_json`` (``_pytest/reports.py``) does; the
parent's ``TestReport(nodeid=...)`` parses it back. Nothing else of pytest-forked changes.
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stats import Summary
from .suite import SuiteFailed, failure, suite_env

INI = """\
[pytest]
addopts = -p no:cacheprovider -p no:hypothesispytest
"""

#: The key under which a test reports the session fixture's id (``record_property``).
SESSION_KEY = "nsbox_bench_session"
#: The environment variable naming the conftest's log (``<path>.<pid>`` is written).
LOG_ENV = "NSBOX_BENCH_ISOLATE_LOG"

CONFTEST = f'''\
import json
import os
import time

import pytest

try:
    import pytest_forked
except ImportError:
    pytest_forked = None

if pytest_forked is not None:
    _serialize = pytest_forked.serialize_report

    def _serialize_nodeid_as_text(rep):
        # pytest >= 9.2 keeps the node id as a NodeId in _id, which marshal refuses;
        # send it as pytest's _report_to_json does: a "nodeid" string.
        d = _serialize(rep)
        if "_id" in d:
            d["nodeid"] = str(d.pop("_id"))
        return d

    pytest_forked.serialize_report = _serialize_nodeid_as_text

_log = {{"start": {{}}, "finish": {{}}, "session_ids": []}}


def pytest_runtest_logstart(nodeid, location):
    _log["start"][nodeid] = time.monotonic()


def pytest_runtest_logfinish(nodeid, location):
    _log["finish"][nodeid] = time.monotonic()


def pytest_runtest_logreport(report):
    if report.when == "call":
        _log["session_ids"] += [str(v) for k, v in report.user_properties
                                if k == "{SESSION_KEY}"]


def pytest_sessionfinish(session):
    path = os.environ.get("{LOG_ENV}")
    if path:
        with open(f"{{path}}.{{os.getpid()}}", "w") as f:
            json.dump(_log, f)


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    token = os.urandom(8).hex()
    (tmp_path_factory.mktemp("shared") / "token").write_text(token)
    return token
'''

TRIVIAL_TESTS = '''\
import pytest


@pytest.mark.parametrize("i", range({n}))
def test_trivial(i):
    pass
'''

FIXTURE_TESTS = f'''\
import pytest


@pytest.mark.parametrize("i", range({{n}}))
def test_fixtures(i, tmp_path, shared, record_property):
    (tmp_path / "out").write_text(shared)
    record_property("{SESSION_KEY}", shared)
'''

SUITES = {"trivial": TRIVIAL_TESTS, "fixtures": FIXTURE_TESTS}
#: What each suite is, for figure names.
DESCRIBED = {"trivial": "trivial tests",
             "fixtures": "tests with `tmp_path` and a session fixture"}
#: Issue 11's goal for the extra cost per isolated test, in ms.
GOAL_MS = 20.0
#: pytest's arguments per mode.
MODES: dict[str, tuple[str, ...]] = {"plain": (), "isolated": ("--nsbox-isolate",),
                                     "forked": ("--forked",)}


def forked_version() -> str | None:
    """pytest-forked's version where this Python can import it, else None."""
    if importlib.util.find_spec("pytest_forked") is None:
        return None
    try:
        return importlib.metadata.version("pytest-forked")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def forked_needs_nodeid_shim() -> bool:
    """Whether this pytest's reports hold a structured ``NodeId`` (pytest >= 9.2), which
    pytest-forked cannot marshal without the conftest's shim."""
    return importlib.util.find_spec("_pytest.nodeid") is not None


@dataclass(frozen=True)
class Session:
    """One whole pytest session of a suite in one mode, seen from outside and from the
    conftest in the outer process."""

    mode: str
    seconds: float  # wall time of the pytest process, start to exit
    per_test_ms: dict[str, float]  # nodeid: logstart -> logfinish in the outer process
    to_first_s: float | None  # process start -> the first test's logstart
    after_last_s: float | None  # the last test's logfinish -> process exit
    session_ids: tuple[str, ...]  # the session fixture's id, one per call report with it

    @property
    def in_tests_s(self) -> float:
        return sum(self.per_test_ms.values()) / 1000


class IsolateSuites:
    """The two suites on disk (``base/root``), run as whole sessions.

    ``base/tmp`` is the sessions' ``TMPDIR`` (their ``tmp_path`` trees), ``base/root/.pycache``
    their ``PYTHONPYCACHEPREFIX``: bytecode is cached as in an installed environment, also
    where this environment sets ``PYTHONDONTWRITEBYTECODE``. Both are inside the bench's
    workspace, so the sweep of its directory takes them."""

    def __init__(self, base: str, n: int) -> None:
        if n < 1:
            raise ValueError(f"a suite needs at least 1 test, got {n}")
        self.base = base
        self.n = n
        self.root = os.path.join(base, "root")
        self.tmp = os.path.join(base, "tmp")
        self.log = os.path.join(base, "log")
        os.makedirs(self.root)
        os.mkdir(self.tmp)
        files = [("pytest.ini", INI), ("conftest.py", CONFTEST)]
        files += [(f"test_{name}.py", text.format(n=n)) for name, text in SUITES.items()]
        for name, content in files:
            with open(os.path.join(self.root, name), "w", encoding="utf-8") as f:
                f.write(content)

    def run(self, suite: str, mode: str, *select: str) -> Session:
        """One session of ``suite`` in ``mode`` (all its tests, or the node ids in
        ``select`` relative to the suite's file). Raises ``SuiteFailed`` when pytest does
        not exit 0 or the conftest wrote no log."""
        target = f"test_{suite}.py"
        args = ["-q", *MODES[mode], *([f"{target}::{s}" for s in select] or [target])]
        env = suite_env({"PYTHONPYCACHEPREFIX": os.path.join(self.root, ".pycache"),
                         "TMPDIR": self.tmp, LOG_ENV: self.log},
                        ("PYTHONDONTWRITEBYTECODE",))
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=self.root,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=3600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        t1 = time.monotonic()
        data = self._take_log(proc.pid)
        if proc.returncode != 0:
            raise failure(args, f"the {suite} suite ({mode})",
                          subprocess.CompletedProcess(args, proc.returncode, out, err))
        if data is None:
            raise SuiteFailed(f"pytest {' '.join(args)} in the {suite} suite ({mode}) passed "
                              f"but its conftest wrote no log ({self.log}.{proc.pid})")
        start, finish = data["start"], data["finish"]
        per_test = {k: (finish[k] - start[k]) * 1000 for k in start if k in finish}
        return Session(mode, t1 - t0, per_test,
                       min(start.values()) - t0 if start else None,
                       t1 - max(finish.values()) if finish else None,
                       tuple(data["session_ids"]))

    def _take_log(self, pid: int) -> dict[str, Any] | None:
        """The outer process's log (``log.<pid>``); every log file is removed."""
        data = None
        for path in glob.glob(glob.escape(self.log) + ".*"):
            if path == f"{self.log}.{pid}":
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            os.unlink(path)
        return data

    def rounds(self, suite: str, modes: list[str], rounds: int,
               progress: Callable[[str], None] = lambda _line: None,
               ) -> tuple[dict[str, list[Session]], dict[str, str]]:
        """``rounds`` interleaved rounds of ``suite`` in each of ``modes`` (``plain``
        first in the list), after one warm-up session per mode on the suite's first test.
        Returns ``(sessions per mode, why a mode stopped)``: a mode that fails (its
        pytest exits non-zero, or its conftest wrote no log) is dropped from the later
        rounds and its failure kept; when ``plain`` fails the rounds stop, as nothing is
        left to compare with."""
        sessions: dict[str, list[Session]] = {m: [] for m in modes}
        failed: dict[str, str] = {}
        first = f"test_{suite}[0]"

        def one(mode: str, *select: str) -> Session | None:
            try:
                return self.run(suite, mode, *select)
            except SuiteFailed as exc:
                failed[mode] = str(exc)
                return None

        for mode in modes:
            one(mode, first)
        for r in range(rounds):
            if "plain" in failed:
                break
            live = [m for m in modes if m not in failed]
            order = live[r % len(live):] + live[:r % len(live)]
            for mode in order:
                got = one(mode)
                if got is not None:
                    sessions[mode].append(got)
            progress(f"{suite} round {r + 1}/{rounds}: " + ", ".join(
                f"{m} {sessions[m][-1].seconds:.2f} s" for m in order if m not in failed))
        return sessions, failed


@dataclass(frozen=True)
class Extra:
    """What ``mode`` costs on top of ``plain``, from rounds of whole sessions."""

    mode: str
    n: int
    rounds_ms: list[float]  # each round's (t_mode - t_plain) / N, in ms
    per_test: Summary | None  # each test's logstart->logfinish, minus plain's (ms)
    outside_s: list[float]  # each round: the session's extra not inside the tests' protocol
    startup_s: list[float]  # each round: the extra from process start to the first test
    mode_s: float  # median session wall time of the mode
    plain_s: float  # median session wall time of plain
    # (median of the distinct session fixture ids per session, tests that reported an id)
    setups: tuple[float, int] | None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.rounds_ms)

    @classmethod
    def of(cls, mode: list[Session], plain: list[Session], n: int) -> Extra:
        """Pairs the i-th session of the mode with the i-th plain session (one round)."""
        if not mode or len(mode) > len(plain):
            raise ValueError(f"{len(mode)} sessions of the mode against {len(plain)} plain")
        pairs = list(zip(mode, plain))
        per_test = [m.per_test_ms[k] - p.per_test_ms[k] for m, p in pairs
                    for k in m.per_test_ms.keys() & p.per_test_ms.keys()]
        outside = [(m.seconds - p.seconds) - (m.in_tests_s - p.in_tests_s) for m, p in pairs
                   if len(m.per_test_ms) == n and len(p.per_test_ms) == n]
        reported = sum(len(m.session_ids) for m in mode)
        return cls(mode=mode[0].mode, n=n,
                   rounds_ms=[(m.seconds - p.seconds) * 1000 / n for m, p in pairs],
                   per_test=Summary.of(per_test) if per_test else None,
                   outside_s=outside,
                   startup_s=[m.to_first_s - p.to_first_s for m, p in pairs
                              if m.to_first_s is not None and p.to_first_s is not None],
                   mode_s=statistics.median(m.seconds for m in mode),
                   plain_s=statistics.median(p.seconds for p in plain),
                   setups=(statistics.median(len(set(m.session_ids)) for m in mode), reported)
                   if reported else None)

    def setups_text(self) -> str:
        """How often the session fixture was set up per session, as its ids came back."""
        if self.setups is None:
            return "no test reported the session fixture's id back (`user_properties`)"
        per_session, reported = self.setups
        return (f"{per_session:g} per session ({reported} of "
                f"{self.n * len(self.rounds_ms)} tests reported its id)")
