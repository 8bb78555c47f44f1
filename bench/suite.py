"""Generated pytest suites: N trivial tests with a box each, and the same N without.

Both run through ``python -m pytest`` in a directory of their own under the workspace, so
what is timed is what a user's suite pays: the plugin, the fixture, the box. The overhead
per sandboxed test is ``(t_box - t_plain) / N``; pytest's own start-up cancels out. A
conftest records each test's setup duration (what a test waits for its box; the warm
pool's effect shows there) into a JSON file named by ``NSBOX_BENCH_SETUP_LOG``.

A third suite, ``nobox``, holds plain tests and no conftest (whose nsbox hook would be an
unknown hook without the plugin): run with the plugin and with ``-p no:nsbox``, it gives
what the plugin costs a session that uses no box.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

INI = """\
[pytest]
addopts = -p no:cacheprovider -p no:hypothesispytest
"""

CONFTEST = '''\
import json
import os

_log = {"setup": [], "call": [], "teardown": [], "start": [], "marks": []}


def pytest_runtest_logreport(report):
    _log[report.when].append(report.duration)


def pytest_nsbox_box_started(box):
    marks = getattr(box, "start_marks", None)
    if marks:
        _log["start"].append(marks[-1][1] - marks[0][1])
        _log["marks"].append([[name, t] for name, t in marks])


def pytest_sessionfinish(session):
    path = os.environ.get("NSBOX_BENCH_SETUP_LOG")
    if path and not hasattr(session.config, "workerinput"):
        with open(path, "w") as f:
            json.dump(_log, f)
'''

BOX_TESTS = '''\
import pytest


@pytest.mark.sandbox(image="busybox")
@pytest.mark.parametrize("i", range({n}))
def test_box(nsbox, i):
    pass
'''

PLAIN_TESTS = '''\
import pytest


@pytest.mark.parametrize("i", range({n}))
def test_plain(i):
    pass
'''


#: Tests in the ``nobox`` suite.
NOBOX_TESTS = 100


class SuiteFailed(Exception):
    pass


def suite_env(extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a generated suite's pytest: this one's, less what would steer
    the run from outside (``PYTEST_*`` such as ``PYTEST_ADDOPTS`` or an xdist worker's
    variables, nsbox tracing, coverage) and the names in ``drop``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "NSBOX_TRACE", "COV_")) and k not in drop}
    env.update(extra or {})
    return env


def failure(args: tuple[str, ...] | list[str], where: str,
            proc: subprocess.CompletedProcess[str]) -> SuiteFailed:
    """A ``SuiteFailed`` naming the pytest arguments, the suite, the exit status and the
    last lines pytest printed."""
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return SuiteFailed(f"pytest {' '.join(args)} in {where} exited {proc.returncode}: "
                       f"{' | '.join(tail)}")


@dataclass
class SuiteRun:
    seconds: float
    setup_ms: list[float]  # each test's setup phase, as pytest reports it
    call_ms: list[float]
    teardown_ms: list[float]
    start_ms: list[float]  # each box's Box.start_marks, requested to ready (not with xdist)
    marks: list[list[tuple[str, float]]]  # each box's Box.start_marks (not with xdist)


class Suites:
    def __init__(self, base: str, n: int) -> None:
        self.base = base
        self.n = n
        os.makedirs(base)
        for kind, text, count in (("box", BOX_TESTS, n), ("plain", PLAIN_TESTS, n),
                                  ("nobox", PLAIN_TESTS, NOBOX_TESTS)):
            d = os.path.join(base, kind)
            os.mkdir(d)
            files = [("pytest.ini", INI), (f"test_{kind}.py", text.format(n=count))]
            if kind != "nobox":
                files.append(("conftest.py", CONFTEST))
            for name, content in files:
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    f.write(content)

    def run(self, kind: str, *args: str, env_extra: dict[str, str] | None = None,
            env_drop: tuple[str, ...] = ()) -> SuiteRun:
        """Run suite ``kind`` (``box``, ``plain`` or ``nobox``); extra args go to pytest."""
        d = os.path.join(self.base, kind)
        log = os.path.join(self.base, f"setup-{kind}.json")
        env = suite_env(env_extra, env_drop)
        env["NSBOX_BENCH_SETUP_LOG"] = log
        argv = [sys.executable, "-m", "pytest", "-q", *args]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=d, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=1800, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise failure(args, f"{kind} suite", proc)
        try:
            with open(log, encoding="utf-8") as f:
                data = json.load(f)
            os.unlink(log)
        except (OSError, ValueError):
            data = {}
        ms = {k: [v * 1000 for v in data.get(k, [])]
              for k in ("setup", "call", "teardown", "start")}
        marks = [[(str(n), float(t)) for n, t in m] for m in data.get("marks", [])]
        return SuiteRun(seconds, ms["setup"], ms["call"], ms["teardown"], ms["start"], marks)

    @staticmethod
    def phases_ms(run: SuiteRun) -> float:
        """Mean per test of the setup, call and teardown phases together."""
        n = max(len(run.setup_ms), 1)
        return (sum(run.setup_ms) + sum(run.call_ms) + sum(run.teardown_ms)) / n

    def overhead(self, reps: int, *args: str) -> tuple[SuiteRun, SuiteRun, float]:
        """Box and plain suites run alternately ``reps`` times; median overhead in ms/test."""
        box: list[SuiteRun] = []
        plain: list[SuiteRun] = []
        for _ in range(reps):
            box.append(self.run("box", *args))
            plain.append(self.run("plain", *args))
        b = sorted(box, key=lambda r: r.seconds)[len(box) // 2]
        p = sorted(plain, key=lambda r: r.seconds)[len(plain) // 2]
        return b, p, (b.seconds - p.seconds) * 1000 / self.n


    def no_box_session(self, rounds: int) -> tuple[list[float], list[float]]:
        """Wall ms of the ``nobox`` suite with the plugin and with ``-p no:nsbox``, in
        ``rounds`` interleaved rounds (each runs both, the order alternating; one warm-up
        round first): ``(with_plugin, without)``.

        Both sides run with bytecode caching on (``PYTHONPYCACHEPREFIX`` in the bench's
        directory, ``PYTHONDONTWRITEBYTECODE`` dropped), as in an installed environment,
        where every module's ``.pyc`` exists: a machine that sets
        ``PYTHONDONTWRITEBYTECODE`` would otherwise charge each session the compiling of
        every module it imports, which is not the plugin's cost."""
        on: list[float] = []
        off: list[float] = []
        runs: list[tuple[list[float], tuple[str, ...]]] = [(on, ()), (off, ("-p", "no:nsbox"))]
        cache = {"PYTHONPYCACHEPREFIX": os.path.join(self.base, "pycache")}
        for r in range(rounds + 1):
            for samples, args in (runs if r % 2 == 0 else runs[::-1]):
                seconds = self.run("nobox", *args, env_extra=cache,
                                   env_drop=("PYTHONDONTWRITEBYTECODE",)).seconds
                if r:
                    samples.append(seconds * 1000)
        return on, off


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None
