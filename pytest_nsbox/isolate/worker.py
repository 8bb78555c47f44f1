"""The isolation worker: one pytest session that collects once and runs each test in a box.

It runs in a box of its own over the ``host`` image (privileged in that box, so it can make
boxes inside it), started by the pytest process with ``python -m
pytest_nsbox.isolate.worker SOCKET``. It connects, takes ``Start`` (pytest's arguments, the
terminal's stdout and stderr), and runs ``pytest.main`` with them and ``WorkerPlugin``,
which serves ``RunItem`` requests in place of pytest's run loop:

1. Wider scopes first, in the worker: the test's collectors are set up and its session-,
   package-, module- and class-scoped fixtures computed, once, as pytest would on its first
   test in that scope (``prepare``). A failure is cached by pytest (``FixtureDef.cached_result``
   keeps the exception, ``SetupState`` the collector's), so the test raises it in its own
   setup, as without isolation.
2. A fork that becomes a box (``runtime.forkbox``): PID 1 of new namespaces, the test's
   cgroup, a copy-on-write root over the worker's. It forks the test process, which runs
   pytest's own phases (``call_and_report``: setup, call, teardown) inside
   ``pytest_runtest_protocol``, so plugins' protocol wrappers (warnings, pytest-timeout,
   faulthandler) are around it, and sends each report as it is made. Its teardown ends at
   the test itself (``_ScopeEnd``): the wider scopes stay up in the worker.
3. Wider scopes down, in the worker, as far as the next test needs (``teardown_exact``);
   their errors come back as the test's teardown report, as they would without isolation.

Nothing the test does reaches the worker: its writes land in the box's own layer, its
processes die with its PID namespace.
"""
from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest
from _pytest.outcomes import TEST_OUTCOME
from _pytest.runner import CallInfo, call_and_report

from ..kernel import libc, proc
from ..kernel.io import read_all, readable
from ..kernel.mountinfo import read as read_mountinfo
from ..runtime import forkbox
from ..runtime.plan import overlay_options
from ..runtime.protocol import ProtocolError
from . import INNER_ENV
from .messages import (Finish, Finished, ItemDone, Ready, Report, RunItem, Start,
                       WarningRecorded, recv, send)

#: Inside the worker's box: the socket's folder (bound from the host), and the worker's
#: scratch tmpfs (the project folder's writable layer, the test boxes' mount points).
CHANNEL_DIR = "/run/nsbox-isolate"
SCRATCH = "/run/nsbox-worker"
#: Every this many tests the worker collects its garbage before freezing it (``_freeze``).
FREEZE_EVERY = 100
#: ``0`` turns spare boxes off (each test's box is then made when the test is asked for).
SPARES_ENV = "NSBOX_ISOLATE_SPARES"


@dataclass
class _Forked:
    """A box's PID 1 the worker forked: its pid, the read end of its status pipe, and for a
    spare the worker's end of its socket, how it was built (network, privileged) and the
    worker's ``generation`` it was forked at."""

    pid: int
    status: int
    ctl: socket.socket | None
    key: tuple[bool, bool]
    generation: int


class _Parents:
    """The chain of collectors above ``item``, for ``SetupState.setup`` (which sets up
    every node ``listchain()`` names that is not up yet)."""

    def __init__(self, item: pytest.Item) -> None:
        self._chain = item.listchain()[:-1]

    def listchain(self) -> list[pytest.Item]:
        return list(self._chain)  # type: ignore[arg-type]


class _ScopeEnd:
    """The ``nextitem`` of the test's teardown in its box: the test's own parents, so
    ``SetupState.teardown_exact`` tears down the test and its function-scoped fixtures and
    stops there (the worker tears down wider scopes). Other attributes are the real next
    item's, for plugins that look at it."""

    def __init__(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        self._chain = item.listchain()[:-1]
        self._next = nextitem

    def listchain(self) -> list[Any]:
        return list(self._chain)

    def __getattr__(self, name: str) -> Any:
        if self._next is None:
            raise AttributeError(name)
        return getattr(self._next, name)


class WorkerPlugin:
    """Registered in the worker's session: serves the pytest process's requests."""

    def __init__(self, sock: socket.socket, start: Start) -> None:
        self.sock = sock
        self.start = start
        self.items: dict[str, pytest.Item] = {}
        self.config: pytest.Config | None = None
        self.pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.mounts = forkbox.child_mounts(read_mountinfo(), skip=(SCRATCH, CHANNEL_DIR),
                                           binds=start.binds)
        self.in_box = False  # True in a test's box process
        #: Bumped whenever the worker's own state changes (a wider fixture set up, a scope
        #: torn down): a spare forked before is then stale.
        self.generation = 0
        self.setups = 0
        self.spare: _Forked | None = None
        self.spares = os.environ.get(SPARES_ENV, "1") != "0"
        self.box_error: str | None = None  # what made the test's box unusable (its user)
        self.forks = 0
        self.finished = False

    # -- the session -----------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        """The terminal is the pytest process's: the worker's own reporter writes nowhere
        (tests' uncaptured output still reaches the terminal, through fd 1 and 2)."""
        self.config = config
        if self.start.workerinput is not None:
            config.workerinput = dict(self.start.workerinput)  # type: ignore[attr-defined]
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            from _pytest._io import TerminalWriter

            reporter._tw = TerminalWriter(open(os.devnull, "w"))  # noqa: SIM115

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = {item.nodeid: item for item in session.items}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        errors = tuple(_collect_errors(session))
        send(self.sock, Ready(collected=len(self.items), errors=errors))
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            raise session.Interrupted(f"{session.testsfailed} errors during collection")
        while True:
            msg, fds = recv(self.sock)
            if msg is None:  # the pytest process is gone: so is every reason to go on
                os._exit(1)
            if isinstance(msg, RunItem):
                self.run_item(session, msg, fds)
            elif isinstance(msg, Finish):
                self.finish(session)
                return True
            else:
                raise ProtocolError(f"nsbox isolation: the worker got an unexpected "
                                    f"{msg.kind!r} message")

    def finish(self, session: pytest.Session) -> None:
        self.discard_spare()
        errors: list[str] = []
        try:
            session._setupstate.teardown_exact(None)
        except BaseException as exc:  # reported to the pytest process, not raised here
            errors.append("".join(traceback.format_exception(exc)))
        send(self.sock, Finished(errors=tuple(errors)))
        self.finished = True

    # -- one test ---------------------------------------------------------------------
    def run_item(self, session: pytest.Session, msg: RunItem, fds: list[int]) -> None:
        item = self.items.get(msg.nodeid)
        if item is None:
            for fd in fds:
                os.close(fd)
            send(self.sock, ItemDone(
                nodeid=msg.nodeid, status=None,
                error="the isolation worker did not collect this test (its collection "
                      "differs from the pytest process's: does collection depend on the "
                      "process, a random seed or the time?)"))
            return
        nextitem = self.items.get(msg.next_nodeid) if msg.next_nodeid else None
        capman: Any = item.config.pluginmanager.get_plugin("capturemanager")
        capturing = capman is not None and capman.is_globally_capturing()
        state = session._setupstate
        if capturing:
            capman.resume_global_capture()
        try:
            before = (tuple(state.stack), self.setups)
            prepare(item)
            if (tuple(state.stack), self.setups) != before:
                self.generation += 1  # what a spare box holds is no longer the worker's
        finally:
            if capturing:  # not read here: the test's setup report takes this output
                capman.suspend_global_capture()
        try:
            status, error, timed_out = self.fork_box(msg, fds)
        finally:
            for fd in fds:
                _close(fd)
        if capturing:
            capman.read_global_capture()  # the box's copy of it was reported already
            capman.resume_global_capture()
        before = (tuple(state.stack), self.setups)
        call = CallInfo.from_call(lambda: state.teardown_exact(nextitem),
                                  when="teardown", reraise=_reraise(item.config))
        if (tuple(state.stack), self.setups) != before:
            self.generation += 1
        sections: list[tuple[str, str]] = []
        if capturing:
            capman.suspend_global_capture()
            out, err = capman.read_global_capture()
            sections += [(f"Captured {name} teardown", text)
                         for name, text in (("stdout", out), ("stderr", err)) if text]
        teardown = None
        if call.excinfo is not None:
            report = item.ihook.pytest_runtest_makereport(item=item, call=call)
            report.sections.extend(sections)
            teardown = item.config.hook.pytest_report_to_serializable(
                config=item.config, report=report)
        if hasattr(item, "_request"):  # as runtestprotocol leaves it: no values held
            item._request = False
            item.funcargs = None  # type: ignore[attr-defined]
        send(self.sock, ItemDone(nodeid=msg.nodeid, status=status, error=error,
                                 timed_out=timed_out, sections=tuple(sections),
                                 teardown=teardown))

    def fork_box(self, msg: RunItem, fds: list[int]) -> tuple[int | None, str | None, bool]:
        """Run the test in a box forked from here: the spare made while the test before it
        ran when it is still good (built the same way, and nothing in the worker changed
        since it was forked), else a new one; then the next test's spare. Returns ``(wait
        status, None)`` of the test's process, or ``(None, why)`` when it never ran or its
        box's PID 1 died."""
        key = (msg.network, msg.privileged)
        spare, self.spare = self.spare, None
        box = None
        if spare is not None and spare.key == key and spare.generation == self.generation:
            try:
                send(spare.ctl, msg, fds)  # type: ignore[arg-type]
                spare.ctl.close()  # type: ignore[union-attr]
                box = spare
            except OSError:  # it died building: its error comes again from a new box
                self._discard(spare)
        elif spare is not None:
            self._discard(spare)
        if box is None:
            box = self._fork(key, msg, fds)
        if self.spares:
            self.spare = self._fork(key, None, [])
        try:
            timed_out = not _wait_exit(box.pid, msg.timeout)
            if timed_out:
                os.kill(box.pid, signal.SIGKILL)
            _, pid1_status = os.waitpid(box.pid, 0)
            data = read_all(box.status)
        finally:
            os.close(box.status)
        if data[:1] == b"S":
            return forkbox.decode_status(data[1:]), None, timed_out
        if data[:1] == b"E":
            return None, data[1:].decode(errors="replace"), timed_out
        return (None, f"the test's box ended before its test did ({_describe(pid1_status)})",
                timed_out)

    def _fork(self, key: tuple[bool, bool], msg: RunItem | None, fds: list[int]) -> _Forked:
        """Fork a box's PID 1: for ``msg`` (its test), or a spare (None) that builds its
        root now and takes its test over a socket later."""
        network, privileged = key
        plan = forkbox.ForkPlan(network=network, mounts=self.mounts,
                                scratch=os.path.join(SCRATCH, "box"), privileged=privileged)
        if msg is not None and msg.seccomp and not msg.privileged:
            forkbox.seccomp_program(msg.caps or ())  # built once, here, not per box
        forkbox.prepare()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._freeze()
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        ours, theirs = (socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                        if msg is None else (None, None))
        pid = forkbox.fork_pid1(self.pidns)
        if pid == 0:
            if ours is not None:
                ours.close()
            self._pid1(msg, fds, plan, theirs, rfd, wfd)
        os.close(wfd)
        if theirs is not None:
            theirs.close()
        return _Forked(pid=pid, status=rfd, ctl=ours, key=key, generation=self.generation)

    def _discard(self, box: _Forked) -> None:
        """A spare that will not be used: killed (its PID namespace with it), waited for."""
        try:
            os.kill(box.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(box.pid, 0)
        os.close(box.status)
        if box.ctl is not None:
            box.ctl.close()

    def discard_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            self._discard(spare)

    def _freeze(self) -> None:
        """Move every object the worker has to the garbage collector's permanent
        generation before a fork, so the box's collections never walk them: a walk writes
        to every object's header and the kernel copies each page it touches (the copy on
        write a fork promises). Now and then the worker collects its own garbage first."""
        self.forks += 1
        if self.forks % FREEZE_EVERY == 1:
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    def _pid1(self, msg: RunItem | None, fds: list[int], plan: forkbox.ForkPlan,
              ctl: socket.socket | None, rfd: int, wfd: int) -> NoReturn:
        """The box's PID 1: build the box, take its test (a spare waits for it), join the
        test's cgroup, fork the test process, reap, report its status."""
        try:
            os.close(rfd)
            forkbox.build(plan)
            if msg is None:
                assert ctl is not None
                got, fds = recv(ctl)
                if not isinstance(got, RunItem):  # the worker let go of this spare
                    os._exit(0)
                msg = got
                ctl.close()
            forkbox.join(msg.hostname, fds)
            scores = proc.choose_oom_scores()
            item = self.items[msg.nodeid]
            nextitem = self.items.get(msg.next_nodeid) if msg.next_nodeid else None
            child = os.fork()
            if child == 0:
                os.close(wfd)
                if scores is not None:  # the test and what it starts, not this PID 1
                    proc.set_oom_score(scores[1])
                self._test_process(item, nextitem, msg)
            status = forkbox.reap(child)
            os.write(wfd, b"S" + forkbox.encode_status(status))
        except BaseException as exc:
            try:
                os.write(wfd, b"E" + f"the test's box could not be made: {exc}".encode())
            except OSError:
                pass
        os._exit(0)

    def _test_process(self, item: pytest.Item, nextitem: pytest.Item | None,
                      msg: RunItem) -> NoReturn:
        code = 70
        try:
            self.in_box = True
            try:
                forkbox.confine(msg.caps, use_seccomp=msg.seccomp and not msg.privileged,
                                no_new_privs=msg.no_new_privs, user=msg.user)
            except Exception as exc:  # the test's setup fails with it, naming the test
                self.box_error = f"{item.nodeid}: nsbox isolate: {exc}"
            os.environ.update(msg.env)
            item.ihook.pytest_runtest_protocol(item=item, nextitem=_ScopeEnd(item, nextitem))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
        os._exit(code)

    # -- hooks that run in a test's box ----------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Any) -> bool | None:
        """pytest's ``runtestprotocol`` without the logging (the pytest process logs), each
        report sent as soon as it is made (a crash keeps the reports before it)."""
        if not self.in_box:
            return None
        if self.box_error is not None:
            error = self.box_error
            failed = CallInfo.from_call(lambda: pytest.fail(error, pytrace=False), when="setup")
            self._send(item, item.ihook.pytest_runtest_makereport(item=item, call=failed))
            # Nothing was set up, so nothing is torn down (plugins' teardown hooks expect
            # their setup hooks to have run).
            nothing = CallInfo.from_call(lambda: None, when="teardown")
            self._send(item, item.ihook.pytest_runtest_makereport(item=item, call=nothing))
            return True
        rep = self._phase(item, "setup")
        if rep.passed and not item.config.getoption("setuponly", False):
            self._phase(item, "call")
        self._phase(item, "teardown", nextitem=nextitem)
        return True

    def _phase(self, item: pytest.Item, when: Any, **kwds: Any) -> pytest.TestReport:
        report = call_and_report(item, when, log=False, **kwds)
        self._send(item, report)
        return report

    def _send(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Send a phase's report. Its status is asked for here first: a plugin may settle
        the outcome there from what it counted in this box (pytest's ``subtests`` fails a
        test that "contains N failed subtests")."""
        item.config.hook.pytest_report_teststatus(report=report, config=item.config)
        data = item.config.hook.pytest_report_to_serializable(config=item.config, report=report)
        send(self.sock, Report(data=data))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A report a plugin logs itself in the test's box (a subtest's, pytest's
        ``subtests`` fixture and unittest ``subTest``): sent to be logged by the pytest
        process too, as pytest-xdist's worker sends every logged report."""
        if self.in_box and self.config is not None:
            data = self.config.hook.pytest_report_to_serializable(config=self.config,
                                                                  report=report)
            send(self.sock, Report(data=data, logged=True))

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self) -> None:
        """Count the worker's own fixture setups (a spare box forked before one is stale)."""
        if not self.in_box:
            self.setups += 1

    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage, when: str,
                                nodeid: str, location: tuple[str, int, str] | None) -> None:
        """A warning of the test, for the pytest process's summary (as pytest-xdist sends
        its workers')."""
        if not self.in_box:
            return
        category = warning_message.category
        send(self.sock, WarningRecorded(
            message=str(warning_message.message), category_module=category.__module__,
            category_name=category.__qualname__, filename=str(warning_message.filename),
            lineno=int(warning_message.lineno), when=when, nodeid=nodeid,
            location=(str(location[0]), int(location[1]), str(location[2])) if location else None))


def prepare(item: pytest.Item) -> None:
    """Set up ``item``'s collectors and compute its wider-scoped fixtures in this process,
    in the order pytest would (``fixturenames`` is the closure, in request order). Errors
    are not raised: pytest caches them, and the test's own setup raises them again."""
    state = item.session._setupstate
    try:
        state.teardown_exact(item)  # what the previous test's scopes left that this one
        state.setup(_Parents(item))  # type: ignore[arg-type]
    except TEST_OUTCOME:
        return
    info = getattr(item, "_fixtureinfo", None)
    request = getattr(item, "_request", None)
    if info is None or not request:
        return
    # The test's own node stands in the stack while its wider fixtures are computed, as in
    # its setup (``getfixturevalue`` checks that its node is active); nothing is torn down
    # when it leaves: only wider scopes' nodes get finalizers from these fixtures.
    state.stack[item] = ([], None)
    try:
        for name in item.fixturenames:  # type: ignore[attr-defined]
            defs = info.name2fixturedefs.get(name)
            if not defs or defs[-1].scope == "function":
                continue
            try:
                request.getfixturevalue(name)
            except TEST_OUTCOME:
                continue
    finally:
        state.stack.pop(item, None)


def _collect_errors(session: pytest.Session) -> list[str]:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return []
    return [str(rep.longrepr) for rep in reporter.stats.get("error", [])
            if not isinstance(rep, pytest.TestReport)]


def _reraise(config: pytest.Config) -> tuple[type[BaseException], ...]:
    """What a phase lets through instead of reporting (``_pytest.runner``'s
    ``get_reraise_exceptions``, which pytest 8 does not have): ``pytest.exit``, and
    KeyboardInterrupt unless ``--pdb``."""
    if config.getoption("usepdb", False):
        return (pytest.exit.Exception,)
    return (pytest.exit.Exception, KeyboardInterrupt)


def _wait_exit(pid: int, timeout: float | None) -> bool:
    """Wait for child ``pid`` to end (not reaping it); False when ``timeout`` seconds pass
    first. Through a pidfd and poll(2), never a signal handler in the worker."""
    if timeout is None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return True
    fd = os.pidfd_open(pid)
    try:
        return bool(readable([fd], timeout))
    finally:
        os.close(fd)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"its PID 1 was killed by signal {os.WTERMSIG(status)}"
    return f"its PID 1 exited with status {os.WEXITSTATUS(status)}"


def _prepare_scratch(cow: tuple[str, ...], binds: tuple[str, ...] = ()) -> None:
    """The worker's tmpfs, and a copy-on-write layer over each folder in ``cow`` (the
    project folder, bound read-only into the box): tests and fixtures may write there as
    they would without isolation, and nothing reaches the host. A user's bind (``binds``)
    inside such a folder is put back on top of the layer, so writes through it do reach
    the host, as asked."""
    os.makedirs(SCRATCH, 0o700, exist_ok=True)
    libc.mount("nsbox", SCRATCH, "tmpfs", libc.MS_NOSUID, "mode=700")
    os.mkdir(os.path.join(SCRATCH, "box"), 0o700)
    for n, path in enumerate(cow):
        inside = [b for b in binds if b.startswith(path.rstrip("/") + "/")]
        held = {b: os.open(b, os.O_PATH | os.O_CLOEXEC) for b in inside}
        upper, work = os.path.join(SCRATCH, f"cow{n}"), os.path.join(SCRATCH, f"cow{n}.work")
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o755)
        st = os.stat(path)
        os.chown(upper, st.st_uid, st.st_gid)
        os.chmod(upper, st.st_mode & 0o7777)
        libc.mount("nsbox", path, "overlay", 0, overlay_options([path], upper, work))
        for target, fd in held.items():
            try:
                libc.mount(f"/proc/self/fd/{fd}", target, None, libc.MS_BIND | libc.MS_REC)
            finally:
                os.close(fd)


def main(argv: list[str]) -> int:
    """``python -m pytest_nsbox.isolate.worker SOCKET``: serve one pytest process."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m pytest_nsbox.isolate.worker SOCKET\n")
        return 2
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(argv[0])
    msg, fds = recv(sock)
    if not isinstance(msg, Start):
        raise ProtocolError(f"nsbox isolation: the worker expected 'start', got "
                            f"{getattr(msg, 'kind', None)!r}")
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(msg.env)
    os.environ[INNER_ENV] = "1"
    sys.path[:] = list(msg.sys_path)
    _prepare_scratch(msg.cow, msg.binds)
    os.chdir(msg.cwd)
    plugin = WorkerPlugin(sock, msg)
    code = pytest.main(list(msg.args), plugins=[plugin])
    if not plugin.finished:
        send(sock, Finished(errors=(f"the worker's pytest ended with exit status {int(code)} "
                                    f"before the session was over",)))
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
