"""Nothing outlives pytest, and one zygote serves a process whatever happens to sys.modules.

How a run's leftovers are found: while the run goes, this process is a child subreaper
(``PR_SET_CHILD_SUBREAPER``, prctl(2)), so every process the run orphans (a zygote whose
owner exited without waiting, a spare or box init whose zygote died) is reparented here
instead of to the host's PID 1, alive or as a zombie. Right after the run returns, every
descendant of this process that was not there before is the run's; ours are those whose
``comm`` is ``nsbox-init`` (the zygote, its spares and box inits) or whose environment
holds a token only that run was given. They are reported, then killed by PID and reaped.

The rule these tests hold the runtime to is the PID namespace's: when the namespace's
init exits, the kernel kills every other process in it, and the init reaps them
(pid_namespaces(7), "The namespace init process"; kernel ``zap_pid_ns_processes``), so a
zygote spawned as such an init cannot leave a box or spare behind even when killed with
SIGKILL; and an owner waits for its zygote (subprocess.Popen.wait) so none is a zombie.
"""
from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from leaks import descendants

from pytest_nsbox.kernel import libc

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(os.geteuid() != 0, reason="boxes need root")]

MARK_ENV = "NSBOX_LIFECYCLE_TOKEN"
OURS_COMM = "nsbox-init"
ZYGOTE_MODULE = "pytest_nsbox.runtime.zygote"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    cmdline: str

    @classmethod
    def read(cls, pid: int) -> Proc | None:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                head, _, tail = f.read().rpartition(")")
            fields = tail.split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            return None
        return cls(pid, int(fields[1]), fields[0], head.partition("(")[2], cmdline)


def _environ_has(pid: int, token: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{MARK_ENV}={token}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _ours(proc: Proc, token: str) -> bool:
    return proc.comm == OURS_COMM or ZYGOTE_MODULE in proc.cmdline or _environ_has(proc.pid, token)


@contextmanager
def _subreaper() -> Iterator[None]:
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 0)


def _reap_and_kill(pids: set[int], timeout: float = 5.0) -> None:
    """Kill what is left (by PID: they are the run's, reparented to us) and reap them."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not (yet) our child, or gone
                if not os.path.exists(f"/proc/{pid}"):
                    left.discard(pid)
                continue
            if done:
                left.discard(pid)
        time.sleep(0.01)


class Run:
    """One pytest subprocess run, with what it left behind."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester = pytester
        self.token = secrets.token_hex(8)
        monkeypatch.setenv(MARK_ENV, self.token)

    def __call__(self, *args: str) -> tuple[pytest.RunResult, list[Proc]]:
        before = descendants()
        with _subreaper():
            try:
                result = self.pytester.runpytest_subprocess("-p", "no:cacheprovider", *args,
                                                            timeout=240)
                # Right after the run returns: no grace period.
                new = [p for p in map(Proc.read, descendants() - before) if p is not None]
                left = [p for p in new if _ours(p, self.token)]
            finally:
                _reap_and_kill(descendants() - before)
        return result, left


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(pytester, monkeypatch)


BOX_TESTS = """
import pytest

@pytest.mark.sandbox(image="busybox")
@pytest.mark.parametrize("i", range({n}))
def test_box(nsbox, i):
    assert nsbox.run(["true"]).returncode == 0
"""


def test_a_plain_run_leaves_no_process(run: Run, pytester: pytest.Pytester) -> None:
    """A normal exit: pytest_unconfigure closes the zygote and waits for it; as its PID
    namespace's init it takes its spare with it (pid_namespaces(7))."""
    pytester.makepyfile(test_boxes=BOX_TESTS.format(n=3))
    result, left = run()
    result.assert_outcomes(passed=3)
    assert left == []


def test_an_xdist_run_leaves_no_process(run: Run, pytester: pytest.Pytester) -> None:
    """``pytest -n 2``: each worker ends its own zygote at its unconfigure, and the
    controller returns only after the worker processes exited (pytest-xdist
    ``workermanage.py`` ``teardown_nodes``: execnet ``Group.terminate`` joins each
    gateway and waits for its process, up to ``EXIT_TIMEOUT`` = 10 s)."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_boxes=BOX_TESTS.format(n=6))
    result, left = run("-n", "2")
    result.assert_outcomes(passed=6)
    assert left == []


@pytest.mark.parametrize("how", ["raise KeyboardInterrupt", "os.kill(os.getpid(), signal.SIGINT)"])
def test_ctrl_c_leaves_no_process(run: Run, pytester: pytest.Pytester, how: str) -> None:
    """Ctrl-C in a test whose box is alive, with more boxes to come: pytest stops
    (``!!! KeyboardInterrupt !!!``, pytest's ``main.py`` wrap_session), still
    unconfigures, and the box, the spare and the zygote are gone when it returns."""
    pytester.makepyfile(test_interrupt=f"""
        import os, signal, time
        import pytest

        @pytest.mark.sandbox(image="busybox")
        def test_a(nsbox):
            nsbox.spawn(["sleep", "1000"])
            {how}
            time.sleep(5)

        @pytest.mark.sandbox(image="busybox")
        def test_b(nsbox):
            pass
    """)
    result, left = run()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    assert left == []


def test_a_zygote_killed_mid_run_leaves_no_zombie(run: Run, pytester: pytest.Pytester) -> None:
    """``kill -9`` of the zygote while a box and a spare live: the kernel kills and reaps
    them with it (it is their PID namespace's init), nothing is reparented to PID 1, and
    the next box gets a new zygote."""
    pytester.makepyfile(test_kill=f"""
        import os, signal, time
        import pytest
        from pytest_nsbox.runtime import client

        PIDS = []

        @pytest.mark.sandbox(image="busybox")
        def test_kill_zygote(nsbox):
            nsbox.spawn(["sleep", "1000"])
            zygote = client.zygote()
            PIDS.append(zygote.proc.pid)
            os.kill(zygote.proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{{nsbox.pid}}") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not os.path.exists(f"/proc/{{nsbox.pid}}"), \
                "the box's init is still there (alive or a zombie) after its zygote died"

        @pytest.mark.sandbox(image="busybox")
        def test_next_box(nsbox):
            assert nsbox.run(["true"]).returncode == 0
            assert client.zygote().proc.pid != PIDS[0]
    """)
    result, left = run()
    result.assert_outcomes(passed=2)
    assert left == []


# -- one zygote per process (pytester's in-process runs reimport the client) --------------

INNER = """
import json
import os
import sys

import pytest

RECORD = {record!r}


def zygotes_of_this_process():
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{{entry}}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{{entry}}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if (int(fields[1]) == os.getpid() and fields[0] != "Z"
                and b"pytest_nsbox.runtime.zygote" in cmdline):
            found.append(int(entry))
    return found


@pytest.mark.sandbox(image="busybox")
def test_box(nsbox_factory):
    from pytest_nsbox import Box
    from pytest_nsbox.runtime import client

    if {direct}:
        with Box(image="busybox") as box:
            assert box.run(["true"]).returncode == 0
    else:
        assert nsbox_factory().run(["true"]).returncode == 0
    fresh = not hasattr(client, "_seen_by_inner_test")
    client._seen_by_inner_test = True
    with open(RECORD, "a") as f:
        f.write(json.dumps({{"fresh_module": fresh, "zygote": client.zygote().proc.pid,
                            "zygotes": zygotes_of_this_process()}}) + "\\n")
"""


def _zygote_children() -> list[int]:
    found = []
    for pid in descendants():
        proc = Proc.read(pid)
        if proc is not None and proc.ppid == os.getpid() and ZYGOTE_MODULE in proc.cmdline:
            found.append(pid)
    return found


@pytest.mark.parametrize("direct", [False, True], ids=["fixture", "Box()"])
def test_in_process_runs_share_one_zygote(pytester: pytest.Pytester,
                                          monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """pytester restores ``sys.modules`` after each in-process run (pytest's
    ``pytester.py`` ``SysModulesSnapshot``), so each run imports the client module anew;
    the zygote must still be this process's one (kept on ``sys``, keyed by PID), not a
    new zygote and spare per run that stay alive for the session, whether the run's
    boxes come from the fixtures or from ``Box()``."""
    import json

    # As in a session whose first box comes from a pytester run: every run imports the
    # runtime (and what it uses) itself. The plugin module stays: pytest loaded it.
    for name in [m for m in sys.modules if m.startswith("pytest_nsbox.")
                 and m not in ("pytest_nsbox.plugin", "pytest_nsbox.newhooks")]:
        monkeypatch.delitem(sys.modules, name)
    record = pytester.path / "record.jsonl"
    pytester.makepyfile(test_inner=INNER.format(record=str(record), direct=direct))
    seen_before = _zygote_children()
    assert len(seen_before) <= 1
    for _ in range(4):
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        assert len(_zygote_children()) == 1, "one zygote for this process, after each run"
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["fresh_module"] for r in rows] == [True] * 4, "the client module was reimported"
    assert all(r["zygotes"] == [r["zygote"]] for r in rows), rows
    assert len({r["zygote"] for r in rows}) == 1, "the same zygote served every run"
    assert _zygote_children() == [rows[0]["zygote"]]


def test_a_forked_child_starts_its_own_zygote() -> None:
    """The registry is keyed by PID: a forked child (``os.fork``, as multiprocessing's
    fork start method does) does not talk to its parent's zygote (whose requests are
    serialized by the parent's lock) but starts its own, and leaves the parent's alone."""
    from pytest_nsbox.runtime import client

    parent = client.zygote()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            own = client.zygote()
            ok = (own is not parent and own.proc.pid != parent.proc.pid
                  and Proc.read(own.proc.pid) is not None
                  and Proc.read(own.proc.pid).ppid == os.getpid())  # type: ignore[union-attr]
            client.shutdown()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.alive and client.zygote() is parent
