"""--nsbox-isolate and sandbox(isolate=True): each test body in a box of its own, forked
from an isolation worker, with outcomes as a plain run gives them.

The reports come back the way pytest-xdist ships its workers' (``pytest_report_to_serializable``
/ ``pytest_report_from_serializable``, pytest-dev/pytest-xdist ``src/xdist/remote.py``
``WorkerInteractor.pytest_runtest_logreport`` and ``dsession.py``
``DSession.worker_testreport``), so these tests compare an isolated run with a plain run of
the same file report by report.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly")

# A conftest that writes every logged report, as the pytest process saw it, to a JSON file.
RECORDER = """
import json, os

_REPORTS = []

def pytest_runtest_logreport(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        text = list(longrepr)
    else:
        text = str(longrepr) if longrepr is not None else None
    _REPORTS.append({
        "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
        "location": list(report.location), "longrepr": text,
        "sections": [[t, c] for t, c in report.sections],
        "wasxfail": getattr(report, "wasxfail", None),
        "user_properties": [[k, v] for k, v in report.user_properties
                            if not k.startswith("nsbox_")],
    })

def pytest_sessionfinish(session):
    path = os.environ.get("REPORTS_JSON")
    if path and not hasattr(session.config, "workerinput"):
        with open(path, "w") as f:
            json.dump(_REPORTS, f)
"""

OUTCOMES = """
import logging
import sys
import pytest

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")

def test_passes(record_property):
    record_property("answer", 42)
    print("to stdout")
    print("to stderr", file=sys.stderr)
    logging.getLogger("t").warning("a log line")

def test_fails():
    x = [1, 2]
    assert x == [1, 3], "lists differ"

def test_skips():
    pytest.skip("not here")

@pytest.mark.skipif(True, reason="never")
def test_skipif():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfails():
    assert 0

@pytest.mark.xfail(reason="fixed?")
def test_xpasses():
    pass

@pytest.mark.xfail(strict=True, reason="must fail")
def test_xpasses_strict():
    pass

def test_setup_error(broken_setup):
    pass

def test_teardown_error(broken_teardown):
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n == 1
"""


def _reports(pytester: pytest.Pytester, *args: str) -> list[dict[str, Any]]:
    path = pytester.path / f"reports-{len(list(pytester.path.glob('reports-*')))}.json"
    pytester.makeconftest(RECORDER)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPORTS_JSON", str(path))
        pytester.runpytest_subprocess(*args, *ARGS)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _comparable(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reports with what differs by nature between processes taken out: file paths in
    tracebacks are the same (the box sees the project at its own path), durations are
    not compared; nsbox's own figures (``nsbox_*`` properties) are left out above."""
    return reports


def test_every_outcome_kind_matches_a_plain_run(pytester: pytest.Pytester) -> None:
    """Pass, fail, skip (at the test's own line), skipif, xfail, xpass (strict and not),
    setup and teardown errors, captured stdout/stderr/log sections and user_properties:
    report by report as a plain run makes them."""
    pytester.makepyfile(test_outcomes=OUTCOMES)
    plain = _reports(pytester, "-rA")
    isolated = _reports(pytester, "-rA", "--nsbox-isolate")
    assert [(r["nodeid"], r["when"]) for r in isolated] == \
        [(r["nodeid"], r["when"]) for r in plain]
    for a, b in zip(plain, isolated):
        assert a == b, (a["nodeid"], a["when"])
    xfail = [r for r in isolated if r["nodeid"].endswith("test_xfails") and r["when"] == "call"]
    assert xfail[0]["outcome"] == "skipped" and xfail[0]["wasxfail"] == "known bug"


def test_terminal_and_junit_match_a_plain_run(pytester: pytest.Pytester) -> None:
    """The terminal's summary line and the JUnit XML (with ``user_properties``) of an
    isolated run are a plain run's."""
    pytester.makepyfile(test_outcomes=OUTCOMES)
    runs = {}
    for name, extra in (("plain", ()), ("isolated", ("--nsbox-isolate",))):
        xml = pytester.path / f"{name}.xml"
        result = pytester.runpytest_subprocess(f"--junitxml={xml}", *extra, *ARGS)
        assert "nsbox_" not in xml.read_text()  # nsbox's figures only with --nsbox-stats
        runs[name] = (result.parseoutcomes(), ET.parse(xml).getroot())
    assert runs["plain"][0] == runs["isolated"][0]
    cases = {}
    for name, (_, root) in runs.items():
        cases[name] = sorted(
            (case.get("classname"), case.get("name"),
             tuple(child.tag for child in case if child.tag != "properties"),
             tuple((p.get("name"), p.get("value")) for p in case.iter("property")))
            for case in root.iter("testcase"))
    assert cases["plain"] == cases["isolated"]
    assert ("answer", "42") in [p for c in cases["isolated"] for p in c[3]]


@pytest.mark.parametrize("option", [["-x"], ["--maxfail=2"], ["--tb=short"], ["--tb=line"],
                                    ["--durations=3"]])
def test_options_behave_as_in_a_plain_run(pytester: pytest.Pytester, option: list[str]) -> None:
    """-x / --maxfail stop the run at the same test; --tb styles and --durations print as in
    a plain run (pytest's own options reach the isolated run, and its outcomes drive
    them)."""
    pytester.makepyfile(test_outcomes=OUTCOMES)
    plain = _reports(pytester, *option)
    isolated = _reports(pytester, *option, "--nsbox-isolate")
    assert isolated == plain
    if option[0].startswith("--durations"):
        result = pytester.runpytest_subprocess(*option, "--nsbox-isolate", *ARGS)
        result.stdout.fnmatch_lines(["*slowest 3 durations*"])


def test_last_failed_and_failed_first(pytester: pytest.Pytester) -> None:
    """--lf and --ff pick and order tests from the cache an isolated run wrote, as after a
    plain run (pytest's cacheprovider, fed by the reports logged here)."""
    pytester.makepyfile(test_lf="""
        def test_a(): pass
        def test_b(): assert 0
        def test_c(): pass
    """)
    first = pytester.runpytest_subprocess("--nsbox-isolate", "-p", "no:randomly")
    first.assert_outcomes(passed=2, failed=1)
    again = pytester.runpytest_subprocess("--nsbox-isolate", "--lf", "-v", "-p", "no:randomly")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*run-last-failure: rerun previous 1 failure*"])
    ff = pytester.runpytest_subprocess("--nsbox-isolate", "--ff", "-v", "-p", "no:randomly")
    ff.stdout.re_match_lines([r".*test_lf.py::test_b FAILED", r".*test_lf.py::test_a PASSED",
                              r".*test_lf.py::test_c PASSED"])


def test_wider_fixtures_are_set_up_once_per_worker(pytester: pytest.Pytester) -> None:
    """Session-, module- and class-scoped fixtures are set up once (before the fork) and
    shared by every test of their scope, as without isolation; each test's box gets a copy
    of what they made."""
    pytester.makepyfile(test_scopes="""
        import os, uuid
        import pytest

        @pytest.fixture(scope="session")
        def session_token(tmp_path_factory):
            path = tmp_path_factory.mktemp("s") / "made-by-session-fixture"
            path.write_text("here")
            return str(uuid.uuid4()), path

        @pytest.fixture(scope="module")
        def module_token():
            return str(uuid.uuid4())

        class TestInClass:
            @pytest.fixture(scope="class")
            def class_token(self):
                return str(uuid.uuid4())

            @pytest.mark.parametrize("n", range(3))
            def test_c(self, n, session_token, module_token, class_token, record_property):
                record_property("s", session_token[0])
                record_property("m", module_token)
                record_property("c", class_token)
                assert session_token[1].read_text() == "here"

        @pytest.mark.parametrize("n", range(3))
        def test_f(n, session_token, module_token, record_property):
            record_property("s", session_token[0])
            record_property("m", module_token)
    """)
    xml = pytester.path / "out.xml"
    result = pytester.runpytest_subprocess("--nsbox-isolate", f"--junitxml={xml}", *ARGS)
    result.assert_outcomes(passed=6)
    props: dict[str, set[str]] = {"s": set(), "m": set(), "c": set()}
    for prop in ET.parse(xml).getroot().iter("property"):
        if prop.get("name") in props:
            props[prop.get("name")].add(prop.get("value"))  # type: ignore[index]
    assert {k: len(v) for k, v in props.items()} == {"s": 1, "m": 1, "c": 1}


def test_each_test_has_its_own_root_hostname_and_pid_namespace(pytester: pytest.Pytester) -> None:
    """A file one test writes under /etc is not there for the next, nor on the host; each
    test has its own hostname and PID namespace, whose PID 1 is its box's init: a process
    one test leaves running is gone for the next."""
    marker = Path("/etc/nsbox-isolate-test-x")
    assert not marker.exists()
    pytester.makepyfile(test_fs="""
        import os, socket

        import subprocess

        def others():
            return sorted(int(p) for p in os.listdir("/proc")
                          if p.isdigit() and int(p) not in (1, os.getpid()))

        def test_writes(record_property):
            assert not os.path.exists("/etc/nsbox-isolate-test-x")
            with open("/etc/nsbox-isolate-test-x", "w") as f:
                f.write("1")
            record_property("host", socket.gethostname())
            assert others() == [] and os.getpid() == 2
            subprocess.Popen(["sleep", "600"])  # left running

        def test_reads(record_property):
            assert not os.path.exists("/etc/nsbox-isolate-test-x")
            record_property("host", socket.gethostname())
            assert others() == [] and os.getpid() == 2
    """)
    xml = pytester.path / "out.xml"
    result = pytester.runpytest_subprocess("--nsbox-isolate", f"--junitxml={xml}", *ARGS)
    result.assert_outcomes(passed=2)
    assert not marker.exists()
    values: dict[str, list[str]] = {"host": []}
    for prop in ET.parse(xml).getroot().iter("property"):
        if prop.get("name") in values:
            values[prop.get("name")].append(prop.get("value"))  # type: ignore[index,arg-type]
    import socket

    assert len(set(values["host"])) == 2 and socket.gethostname() not in values["host"]


def test_memory_limit_kill_fails_the_test_and_the_next_one_runs(pytester: pytest.Pytester) -> None:
    """A 64M test that allocates 200 MB is killed by the kernel's OOM killer in its own
    cgroup; it fails with the limit and the peak, and the next test passes in a fresh box."""
    pytester.makepyfile(test_oom="""
        import pytest

        @pytest.mark.sandbox(memory="64M")
        def test_hog():
            blocks = [bytearray(1 << 20) for _ in range(200)]
            assert len(blocks) == 200

        def test_next():
            assert sum(range(10)) == 45
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines([r".*test_hog.*exceeded memory=64M \(peak \d+\.\d MiB\).*"])


def test_a_subprocess_killed_for_memory_is_a_note_not_the_cause(
        pytester: pytest.Pytester) -> None:
    """A test whose subprocess the OOM killer took and which then exits, or fails an
    assertion, is reported as it ended, not as "exceeded memory": the kills are a note on
    the failure (the OOM killer's only signal is SIGKILL, mm/oom_kill.c)."""
    pytester.makepyfile(test_sub="""
        import os, subprocess, sys
        import pytest

        HOG = [sys.executable, "-c", "b = bytearray(400 << 20)"]

        @pytest.mark.sandbox(memory="128M")
        def test_exits():
            assert subprocess.run(HOG).returncode == -9
            os._exit(3)

        @pytest.mark.sandbox(memory="128M")
        def test_asserts():
            assert subprocess.run(HOG).returncode == 0

        def test_next():
            pass
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=1, failed=2)
    note = "the kernel killed * of the test's box for memory, at memory=128M"
    result.stdout.fnmatch_lines([
        f"*::test_exits: its process exited with status 3 before the test ended ({note})*"])
    result.stdout.fnmatch_lines(["*test_asserts*", "*assert -9 == 0*",
                                 "*nsbox isolate: OOM kills*", note])
    result.stdout.no_fnmatch_line("*exceeded memory*")


def test_gc_removes_what_a_killed_isolation_session_left(pytester: pytest.Pytester) -> None:
    """``kill -9`` of a pytest in the middle of an isolated test: its socket folder
    (``<run>/isolate-<pid>-<start time>-*``) has no one left to remove it, so the next
    ``gc`` does, with the worker's box; nothing of it keeps running."""
    import glob
    import signal
    import subprocess
    import sys
    import time

    from pytest_nsbox import sweep
    from pytest_nsbox.state import StateDirs

    pytester.makepyfile(test_slow="""
        import time

        def test_sleeps():
            time.sleep(60)
    """)
    run = StateDirs.default().run
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "--nsbox-isolate", *ARGS],
                            cwd=pytester.path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        pattern = os.path.join(run, f"isolate-{proc.pid}-*")
        deadline = time.monotonic() + 60
        while not glob.glob(pattern) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        folder, = glob.glob(pattern)
        time.sleep(1)  # the test is running in its box
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert os.path.isdir(folder)
    try:
        removed = sweep.collect(StateDirs.default())
    except sweep.GcIncomplete as exc:  # something of another run; ours is checked below
        removed = exc.removed
    assert f"removed run folder {folder} (its process is gone)" in removed
    assert not os.path.exists(folder)


def test_the_oom_killer_picks_the_test_not_its_boxs_pid_1(pytester: pytest.Pytester) -> None:
    """An isolated test's box has a PID 1 that reports the test's status: the test and
    what it starts get the commands' ``oom_score_adj`` and PID 1 the init's, as in a box
    (``kernel.proc.choose_oom_scores``): with CAP_SYS_RESOURCE -999 and 0, as Docker; without
    it (rootless, or this host) 1000, as Kubernetes' BestEffort pods
    (pkg/kubelet/qos/policy.go). A test must not run at -999 either: the host's own OOM
    killer would spare it."""
    pytester.makepyfile(test_scores="""
        import subprocess, sys

        def test_scores():
            own = open("/proc/self/oom_score_adj").read().strip()
            child = subprocess.run(
                [sys.executable, "-c", "print(open('/proc/self/oom_score_adj').read())"],
                capture_output=True, text=True, check=True).stdout.strip()
            init = open("/proc/1/oom_score_adj").read().strip()
            print("scores", init, own, child)
            assert own == child
            assert (init, own) == ("-999", "0") or (own == "1000" and int(init) < 1000)
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=1)


def test_crashes_are_outcomes(pytester: pytest.Pytester) -> None:
    """A test process that calls os._exit, is killed by a signal or outlives its
    ``timeout=`` fails with that cause; the run goes on."""
    pytester.makepyfile(test_crash="""
        import os, signal, time
        import pytest

        def test_exit():
            os._exit(3)

        def test_segv():
            os.kill(os.getpid(), signal.SIGSEGV)

        @pytest.mark.sandbox(timeout=2)
        def test_hangs():
            time.sleep(60)

        def test_after():
            pass
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines_random([
        "*test_exit*exited with status 3*", "*test_segv*killed by SIGSEGV*",
        "*test_hangs*timed out after 2 s*"])


def test_pytest_timeout_runs_in_the_box(pytester: pytest.Pytester) -> None:
    """pytest-timeout's alarm fires in the test's box, where the test runs, and the test
    fails with pytest-timeout's own message, as without isolation."""
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_pt="""
        import time
        import pytest

        @pytest.mark.timeout(1)
        def test_slow():
            time.sleep(30)

        def test_fast():
            pass
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>1.0s) from pytest-timeout*"])


def test_any_test_id_makes_a_box(pytester: pytest.Pytester) -> None:
    """Parametrize ids with a space, '/', ':', '(', '+', quotes or non-ASCII each get a
    valid, distinct hostname (RFC 1123 labels)."""
    pytester.makepyfile(test_ids="""
        import re, socket
        import pytest

        SEEN = set()

        @pytest.mark.parametrize("v", ["a b", "x/y", "h:p", "f(x)", "1+1", "'q'", '"d"',
                                       "é ü", "日本", "-", ""])
        def test_id(v, record_property):
            name = socket.gethostname()
            assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name), name
            record_property("host", name)
    """)
    xml = pytester.path / "out.xml"
    result = pytester.runpytest_subprocess("--nsbox-isolate", f"--junitxml={xml}", *ARGS)
    result.assert_outcomes(passed=11)
    hosts = [p.get("value") for p in ET.parse(xml).getroot().iter("property")
             if p.get("name") == "host"]
    assert len(set(hosts)) == 11


def test_the_box_gets_the_environment_and_the_command_line(pytester: pytest.Pytester) -> None:
    """The pytest process's environment (PATH included), its -o ini overrides and -p
    plugins reach the isolated tests."""
    pytester.makepyfile(my_plugin="""
        def pytest_configure(config):
            config.addinivalue_line("markers", "from_plugin: made by my_plugin")
    """)
    pytester.makepyfile(test_env="""
        import os

        def test_env(request):
            assert os.environ["NSBOX_TEST_VAR"] == "from the outside"
            assert os.environ["PATH"] == os.environ["NSBOX_TEST_PATH"]
            assert request.config.getini("python_functions") == ["test_*", "check_*"]
            assert request.config.pluginmanager.has_plugin("my_plugin")
    """)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NSBOX_TEST_VAR", "from the outside")
        import os

        mp.setenv("NSBOX_TEST_PATH", os.environ["PATH"])
        mp.setenv("PYTHONPATH", str(pytester.path))
        result = pytester.runpytest_subprocess("--nsbox-isolate", "-p", "my_plugin",
                                               "-o", "python_functions=test_* check_*", *ARGS)
    result.assert_outcomes(passed=1)


def test_ini_defaults_for_confinement_keys(pytester: pytest.Pytester) -> None:
    """One ini line grants what a network-admin suite needs (``nsbox_cap_add =
    NET_ADMIN``): without it the isolated test may not bring its loopback down."""
    pytester.makepyfile(test_netadmin="""
        import fcntl, socket, struct

        def test_lo_down_up():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            req = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, req))[1]
            fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags & ~1))
            fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags))
    """)
    denied = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    denied.assert_outcomes(failed=1)
    denied.stdout.fnmatch_lines(["*PermissionError*"])
    pytester.makeini("[pytest]\nnsbox_cap_add = NET_ADMIN\n")
    granted = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    granted.assert_outcomes(passed=1)


def test_ini_isolate_and_marker(pytester: pytest.Pytester) -> None:
    """``nsbox_isolate = true`` isolates every test; without it, ``sandbox(isolate=True)``
    isolates that test alone and the others run in the pytest process."""
    pytester.makepyfile(test_some="""
        import os
        import pytest

        @pytest.mark.sandbox(isolate=True)
        def test_in_box():
            assert os.environ.get("NSBOX_ISOLATED") == "1"

        def test_here():
            assert os.environ.get("NSBOX_ISOLATED") is None
    """)
    pytester.runpytest_subprocess(*ARGS).assert_outcomes(passed=2)
    pytester.makeini("[pytest]\nnsbox_isolate = true\n")
    pytester.runpytest_subprocess(*ARGS).assert_outcomes(passed=1, failed=1)


@pytest.mark.parametrize("how", ["--nsbox-isolate", "ini nsbox_isolate = true"])
def test_a_marker_with_isolate_false_keeps_its_test_out(pytester: pytest.Pytester,
                                                        how: str) -> None:
    """``sandbox(isolate=False)`` on a test, or on its class or module, runs it in the
    pytest process under ``--nsbox-isolate`` or the ini option too: the closest marker
    that states a key wins, as for every key; a closer ``isolate=True`` puts a test of a
    module marked ``isolate=False`` back in."""
    pytester.makepyfile(test_some="""
        import os
        import pytest

        pytestmark = pytest.mark.sandbox(isolate=False)

        def test_module_says_here():
            assert os.environ.get("NSBOX_ISOLATED") is None

        @pytest.mark.sandbox(isolate=True)
        def test_closer_says_box():
            assert os.environ.get("NSBOX_ISOLATED") == "1"
    """)
    pytester.makepyfile(test_other="""
        import os
        import pytest

        @pytest.mark.sandbox(memory="64M")
        def test_unstated_is_isolated():
            assert os.environ.get("NSBOX_ISOLATED") == "1"

        def test_unmarked_is_isolated():
            assert os.environ.get("NSBOX_ISOLATED") == "1"
    """)
    args = list(ARGS)
    if how.startswith("ini"):
        pytester.makeini("[pytest]\nnsbox_isolate = true\n")
    else:
        args.append(how)
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=4)


def test_xdist_with_isolation_matches_xdist(pytester: pytest.Pytester) -> None:
    """``-n 2 --nsbox-isolate`` gives the outcomes ``-n 2`` gives; each xdist worker has
    its own isolation worker, so a session fixture is set up once per xdist worker."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_outcomes=OUTCOMES)
    plain = pytester.runpytest_subprocess("-n", "2", *ARGS)
    isolated = pytester.runpytest_subprocess("-n", "2", "--nsbox-isolate", *ARGS)
    assert isolated.parseoutcomes() == plain.parseoutcomes()


def test_boxes_cannot_be_made_inside_an_isolated_test(pytester: pytest.Pytester) -> None:
    """A test that makes boxes itself (``nsbox``) is not isolated again: its boxes are its
    isolation, and it runs in the pytest process."""
    pytester.makepyfile(test_nested="""
        import os

        def test_uses_nsbox(nsbox):
            assert os.environ.get("NSBOX_ISOLATED") is None
            assert nsbox.run("echo hi").stdout == "hi\\n"
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=1)


def test_a_hang_in_a_session_fixture_is_bounded(pytester: pytest.Pytester) -> None:
    """A session fixture that never returns holds the worker, not the run: the test fails
    with the cause after its ``timeout`` (and a grace for the worker to answer), a new
    worker takes the next test."""
    pytester.makepyfile(test_hang="""
        import time
        import pytest

        @pytest.fixture(scope="session")
        def stuck():
            time.sleep(600)

        @pytest.mark.sandbox(timeout=2)
        def test_needs_stuck(stuck):
            pass

        def test_after():
            pass
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*timed out after 2 s in the isolation worker*"])


def test_the_marker_user_runs_the_test(pytester: pytest.Pytester) -> None:
    """``sandbox(user=...)`` is resolved in the box's /etc/passwd and /etc/group as runc
    resolves it (opencontainers/runc ``libcontainer/user`` GetExecUser, our
    ``model/users.py``); an unknown user fails the test's setup naming it."""
    pytester.makepyfile(test_user="""
        import os
        import pytest

        @pytest.mark.sandbox(user="nobody")
        def test_nobody():
            assert os.getuid() == 65534 and os.geteuid() == 65534
            with pytest.raises(PermissionError):
                open("/etc/nsbox-owned-by-root", "w")

        @pytest.mark.sandbox(user="no-such-user-here")
        def test_unknown():
            pass

        def test_root():
            assert os.getuid() == 0
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_unknown: nsbox isolate: unable to find user "
                                 "no-such-user-here*"])


def test_subtests_count_as_in_a_plain_run(pytester: pytest.Pytester) -> None:
    """Reports a plugin logs itself during the test (pytest's ``subtests`` fixture and
    unittest ``subTest``) reach the pytest process, as pytest-xdist's worker sends every
    logged report, and a test that "contains failed subtests" fails as in a plain run."""
    pytester.makepyfile(test_sub="""
        import unittest

        class T(unittest.TestCase):
            def test_sub(self):
                for i in range(3):
                    with self.subTest(i=i):
                        self.assertNotEqual(i, 1)

        def test_fixture(subtests):
            for i in range(3):
                with subtests.test(i=i):
                    assert i != 2
    """)
    plain = pytester.runpytest_subprocess(*ARGS)
    isolated = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    assert isolated.parseoutcomes() == plain.parseoutcomes()


def test_a_writable_bind_inside_the_project_reaches_the_host(pytester: pytest.Pytester) -> None:
    """The worker's copy-on-write layer over the project folder does not hide a user's
    writable bind inside it (``nsbox_binds``): a test's write through it is on the host."""
    out = pytester.path / "out"
    out.mkdir()
    pytester.makepyfile(test_bind="""
        import pathlib

        def test_write():
            (pathlib.Path(__file__).parent / "out" / "written.txt").write_text("x")
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", "-o",
                                           f"nsbox_binds={out}:{out}:rw", *ARGS)
    result.assert_outcomes(passed=1)
    assert (out / "written.txt").read_text() == "x"


def test_a_project_on_overlayfs_names_the_kernels_stacking_limit(
        pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A project folder that is overlayfs already (as everything is in a Docker
    container's root): the worker's copy-on-write layer over it is the second overlayfs of
    the stack and a test's would be the third, which the kernel refuses with EINVAL
    (fs/overlayfs/super.c: "maximum fs stacking depth exceeded",
    ``FILESYSTEM_MAX_STACK_DEPTH`` 2). The test fails with that named, and the mount is
    the only thing left to undo."""
    import subprocess

    pytester.makepyfile(test_on_overlay="""
        def test_one():
            assert True
    """)
    layers = tmp_path_factory.mktemp("project-overlay")
    (layers / "upper").mkdir()
    (layers / "work").mkdir()
    project = str(pytester.path)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={project},upperdir={layers / 'upper'},workdir={layers / 'work'}",
                    project], check=True)
    try:
        result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    finally:
        subprocess.run(["umount", project], check=True)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test's copy-on-write layer over * was refused*"
                                 "*FILESYSTEM_MAX_STACK_DEPTH is 2*"])
