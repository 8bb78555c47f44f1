"""``--nsbox-isolate`` / ``sandbox(isolate=True)``: each test body in a box of its own.

The pytest process does not run an isolated test itself. It hands it to its isolation
worker (``worker.py``): a second pytest, started once with the same arguments in a box over
the ``host`` image, that collects once, keeps session-, package-, module- and class-scoped
fixtures up across tests as pytest does, and forks a box per test (``runtime.forkbox``).
The test's phases run there; their reports come back serialized, the way pytest-xdist ships
them (``pytest_report_to_serializable`` / ``pytest_report_from_serializable``), and this
process logs them through ``pytest_runtest_logreport``: the terminal, JUnit XML,
``--lf``, ``-x``, ``--durations`` and xdist see what they would see without isolation.

This process owns each test's cgroup (made with the marker's limits before the test, read
for the failure message and ``--nsbox-stats``, removed after) and bounds the test's time:
a test whose process dies (OOM, a signal, ``os._exit``) or that outlives its ``timeout``
fails with that cause; the next test gets a fresh box. A worker that dies is replaced.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pytest

from ..kernel.io import readable

if TYPE_CHECKING:
    from ..model.spec import BoxSpec
    from ..runtime.box import Box
    from ..runtime.engine import Engine
    from ..runtime.process import Process
    from .messages import Message

INNER_ENV = "NSBOX_ISOLATED"
#: How long a worker may take to connect after its box started, in seconds.
CONNECT_TIMEOUT = 60.0
#: After a timeout kills a test's processes, how long its worker has to say so.
KILL_GRACE = 10.0
#: pytest-timeout's alarm fires in the test's box; this process stops waiting this much later.
TIMEOUT_GRACE = 10.0


def inner() -> bool:
    """True inside an isolation worker and the tests it runs."""
    return os.environ.get(INNER_ENV) == "1"


_LABEL_BAD = re.compile(r"[^a-z0-9-]+")


def hostname_for(nodeid: str) -> str:
    """A hostname for the test ``nodeid``: its name made a DNS label (RFC 1123: letters,
    digits and ``-``, at most 63) and, for uniqueness, 8 hex digits of its hash. Any test id
    gives a valid one (``test_x[a b/c:(d)+'é']`` -> ``test-x-a-b-c-d-3f1c2a9e``)."""
    name = nodeid.rpartition("::")[2] or nodeid
    digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]
    label = _LABEL_BAD.sub("-", name.lower()).strip("-")[:63 - 9] or "test"
    return f"{label.rstrip('-')}-{digest}"


def short_size(n: int) -> str:
    """Bytes as the marker spells them: ``67108864`` -> ``64M``, ``1610612736`` -> ``1.5G``."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:g}{unit}" if round(value, 2) == value else f"{value:.2f}{unit}"
    return f"{n}"


@dataclass(frozen=True)
class WorkerKey:
    """What one worker's box is: its image, whether it is on the host's network, and the
    folders bound into it. Tests that agree on these share a worker."""

    image: str
    host_network: bool
    binds: tuple[tuple[str, str, bool], ...]

    @classmethod
    def of(cls, spec: BoxSpec) -> WorkerKey:
        return cls(image=spec.image, host_network=spec.network == "host",
                   binds=tuple(sorted((b.source, b.target, b.readonly) for b in spec.binds)))


class WorkerGone(Exception):
    """The worker ended (or broke its protocol); the message says how."""


class Worker:
    """One isolation worker serving this pytest process: its box, the worker process in it
    and the socket to it. ``start`` is lazy (at the first isolated test); ``close`` ends the
    worker's session (tearing down its fixtures) and its box."""

    def __init__(self, config: pytest.Config, engine: Callable[[], Engine], key: WorkerKey,
                 make_box: Callable[[BoxSpec], Box]) -> None:
        self.config = config
        self._engine = engine
        self.key = key
        self._make_box = make_box
        self.box: Box | None = None
        self.proc: Process | None = None
        self.sock: socket.socket | None = None
        self.dir: str | None = None
        self.problems: list[str] = []
        #: A test was sent and its ``ItemDone`` has not come (an interrupted or hung run):
        #: the worker cannot take ``Finish``, ``close`` stops its box at once.
        self.busy = False

    # -- life --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker's box and process and wait for its collection. Raises
        ``WorkerGone`` (with the worker's output) when it ends before it is ready."""
        from ..model.spec import BoxSpec
        from ..sweep import process_dir_prefix
        from .messages import Ready, Start, recv, send
        from .worker import CHANNEL_DIR

        engine = self._engine()
        os.makedirs(engine.dirs.run, 0o700, exist_ok=True)
        # named for this process, so gc removes it when pytest was killed
        self.dir = tempfile.mkdtemp(prefix=process_dir_prefix("isolate"), dir=engine.dirs.run)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(os.path.join(self.dir, "sock"))
            listener.listen(1)
            binds = {p: f"{p}:ro" for p in self._hidden_sys_path()}
            binds[self.dir] = CHANNEL_DIR
            binds.update({src: f"{dst}:{'ro' if ro else 'rw'}"
                          for src, dst, ro in self.key.binds})
            spec = BoxSpec.from_kwargs(
                {"image": self.key.image, "privileged": True, "binds": binds,
                 "network": "host" if self.key.host_network else "none",
                 "hostname": "nsbox-isolation-worker"}, source="isolate")
            self.box = self._make_box(spec)
            if not self.box.image.from_host_os and not self.box.exists(sys.executable):
                raise WorkerGone(
                    f"isolation runs this Python ({sys.executable}) in a box over the test's "
                    f"image, and image {self.key.image!r} does not have it; isolate over the "
                    f"'host' image, or an image built FROM host")
            env = dict(os.environ)
            env[INNER_ENV] = "1"
            cwd = str(self.config.invocation_params.dir)
            self.proc = self.box.spawn(
                [sys.executable, "-m", "pytest_nsbox.isolate.worker", f"{CHANNEL_DIR}/sock"],
                env={INNER_ENV: "1", "PATH": env.get("PATH", "")}, cwd="/")
            self.sock = self._accept(listener)
        finally:
            listener.close()
        workerinput = getattr(self.config, "workerinput", None)
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        out, err = self._terminal(capman)
        try:
            send(self.sock, Start(
                args=tuple(self._args()), cwd=cwd, sys_path=tuple(sys.path), env=env,
                workerinput=dict(workerinput) if workerinput is not None else None,
                cow=tuple(self._cow()), binds=tuple(dst for _s, dst, _ro in self.key.binds)),
                [out, err])
        finally:
            os.close(out)
            os.close(err)
        msg = self._next(None)
        if not isinstance(msg, Ready):
            raise WorkerGone(f"the isolation worker sent {msg.kind!r} before it was ready")

    def _accept(self, listener: socket.socket) -> socket.socket:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while time.monotonic() < deadline:
            if readable([listener.fileno()], 0.1):
                conn, _ = listener.accept()
                return conn
            if self.proc is not None and self.proc.poll() is not None:
                raise WorkerGone(self._ended("before it connected"))
        raise WorkerGone(f"the isolation worker did not connect within {CONNECT_TIMEOUT:.0f} s")

    @staticmethod
    def _terminal(capman: Any) -> tuple[int, int]:
        """This process's own stdout and stderr, not its capture's."""
        if capman is None:
            return os.dup(1), os.dup(2)
        with capman.global_and_fixture_disabled():
            return os.dup(1), os.dup(2)

    def _args(self) -> list[str]:
        """The worker's pytest arguments: this process's, without distribution (one
        worker serves one process; under xdist each xdist worker has its own)."""
        args = list(self.config.invocation_params.args)
        if self.config.pluginmanager.has_plugin("xdist"):
            args += ["-n", "0"]
        return args

    def _hidden_sys_path(self) -> list[str]:
        """Folders on this process's ``sys.path`` (a ``PYTHONPATH`` entry, a plugin's
        folder) that the ``host`` image does not show: bound read-only into the worker's
        box, so its pytest imports what this one does (``plan.host_binds`` binds the
        project and this Python already)."""
        if self.key.image != "host":
            return []
        from ..images import builtin
        from ..runtime.plan import host_binds

        _key, masked = builtin.host_mask_key("/")
        bound = [b.source for b in host_binds(str(self.config.rootpath))]
        out: list[str] = []
        for entry in sys.path:
            path = os.path.realpath(entry) if entry else ""
            if (not path or path == "/" or not os.path.isdir(path)
                    or builtin.host_shows(path, masked)
                    or any(path == b or path.startswith(b.rstrip("/") + "/")
                           for b in [*bound, *out])):
                continue
            out.append(path)
        return out

    def _cow(self) -> list[str]:
        """Folders a ``host`` image box shows read-only that tests may write to without
        isolation: the project's (rootdir) and where pytest was started."""
        from ..runtime.plan import host_binds

        if not self.box or not self.box.image.from_host_os:
            return []
        bound = [b.target for b in host_binds(str(self.config.rootpath))]
        root = os.path.realpath(str(self.config.rootpath))
        return [p for p in bound if p == root]

    def close(self) -> None:
        """End the worker's session (its wider-scoped fixtures are torn down; errors go to
        ``problems``), then its box: every process in it is killed, its cgroup and layers
        removed. A worker in the middle of a test (interrupted, hung) is stopped at once."""
        from .messages import Finish, Finished, send

        try:
            if self.alive and not self.busy:
                assert self.sock is not None
                send(self.sock, Finish())
                while True:
                    msg = self._next(None)
                    if isinstance(msg, Finished):
                        self.problems += list(msg.errors)
                        break
        except (WorkerGone, OSError) as exc:
            self.problems.append(str(exc))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.box is not None:
            box, self.box = self.box, None
            box.close()
        if self.dir is not None:
            try:
                os.unlink(os.path.join(self.dir, "sock"))
                os.rmdir(self.dir)
            except OSError:
                pass
            self.dir = None

    @property
    def alive(self) -> bool:
        return self.sock is not None and self.proc is not None and self.proc.poll() is None

    def _ended(self, when: str) -> str:
        proc = self.proc
        if proc is None:
            return f"the isolation worker ended {when}"
        result = proc.wait(timeout=5)
        tail = (result.stdout + result.stderr).strip()[-3000:]
        status = (f"killed by {_signame(-result.returncode)}" if result.returncode < 0
                  else f"exit status {result.returncode}")
        return f"the isolation worker ended {when} ({status})" + (f":\n{tail}" if tail else "")

    # -- messages ---------------------------------------------------------------------
    def _next(self, deadline: float | None) -> Message:
        """The worker's next message; ``TimeoutError`` at ``deadline`` (monotonic);
        ``WorkerGone`` at the end of the stream."""
        from .messages import recv

        assert self.sock is not None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if readable([self.sock.fileno()], wait if wait is None else min(wait, 1.0)):
                msg, fds = recv(self.sock)
                for fd in fds:
                    os.close(fd)
                if msg is None:
                    raise WorkerGone(self._ended("during the test"))
                return msg
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    # -- one test ---------------------------------------------------------------------
    def run(self, item: pytest.Item, nextitem: pytest.Item | None, spec: BoxSpec,
            hard_timeout: float | None) -> Outcome:
        """Run ``item`` in a box of the worker; its reports, the box's figures and how its
        process ended. Raises ``WorkerGone`` when the worker ends mid-test (the caller
        reports the test and replaces the worker)."""
        from .. import teststats
        from ..cgroups.base import Limits
        from ..kernel import caps
        from .messages import ItemDone, Report, RunItem, WarningRecorded, report_data, send

        engine = self._engine()
        limits = Limits(memory=spec.memory, cpus=spec.cpus, pids=spec.pids)
        # A cgroup of the host's with the test's limits (or, rootless without a delegated
        # cgroup, a stand-in the engine's ``unavailable_limits`` policy allows). A test
        # with no limit, run without --nsbox-stats, needs none: its box's PID namespace
        # holds its processes, and the worker kills them at its timeout.
        measured = item.config.getoption("nsbox_stats", None) is not None
        cgroup: Any = (engine.box_cgroup(f"nsbox-{os.urandom(6).hex()}", limits)
                       if limits.requested() or measured else None)
        outcome = Outcome(item.nodeid)
        sampler = teststats.sampler(item, cgroup) if cgroup is not None else None
        try:
            fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                   for path in (cgroup.procs_files() if cgroup is not None else ())]
            keep = None if spec.privileged else caps.resolve(spec.cap_add, spec.cap_drop, False)
            msg = RunItem(nodeid=item.nodeid,
                          next_nodeid=nextitem.nodeid if nextitem is not None else None,
                          hostname=spec.hostname or hostname_for(item.nodeid),
                          network=spec.network != "host", caps=None if keep is None else tuple(keep),
                          seccomp=spec.seccomp, no_new_privs=not spec.privileged,
                          privileged=spec.privileged, env=dict(spec.env), user=spec.user,
                          timeout=hard_timeout, cgroup_fds=len(fds))
            assert self.sock is not None
            start = time.monotonic()
            self.busy = True
            try:
                send(self.sock, msg, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            # The worker kills the test's box at ``hard_timeout``; past this, the worker
            # itself is stuck (in a wider fixture): its test's processes are killed here,
            # and if it still does not answer, it is stopped.
            deadline = None if hard_timeout is None else start + hard_timeout + KILL_GRACE
            hook = item.config.hook
            killed = False
            while True:
                try:
                    reply = self._next(deadline)
                except TimeoutError:
                    if killed:
                        self.busy = True
                        raise WorkerGone(
                            f"timed out after {hard_timeout:g} s in the isolation worker, "
                            f"before or after the test's box (a hang in a session, package, "
                            f"module or class fixture?); the worker was stopped") from None
                    killed = True
                    if cgroup is not None:
                        cgroup.kill_all()
                    deadline = time.monotonic() + KILL_GRACE
                    continue
                if isinstance(reply, Report):
                    report = hook.pytest_report_from_serializable(
                        config=item.config, data=report_data(reply.data))
                    (outcome.logged if reply.logged else outcome.reports).append(report)
                elif isinstance(reply, WarningRecorded):
                    _log_warning(item.config, reply)
                elif isinstance(reply, ItemDone):
                    outcome.done = reply
                    if reply.timed_out or killed:
                        outcome.timed_out = hard_timeout
                    self.busy = False
                    break
                else:
                    raise WorkerGone(f"the isolation worker sent an unexpected {reply.kind!r}")
            outcome.wall = time.monotonic() - start
        finally:
            if sampler is not None:  # while the cgroup is still there
                sampler.stop()
            if cgroup is not None:
                try:
                    outcome.stats = cgroup.stats()
                except Exception:
                    outcome.stats = None
                cgroup.destroy()
        return outcome


class Outcome:
    """What came back for one test: its reports (in phase order), the worker's
    ``ItemDone``, whether it timed out (after how many seconds), the cgroup's figures."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.reports: list[pytest.TestReport] = []
        #: Reports plugins logged during the test (subtests), in their order.
        self.logged: list[pytest.TestReport] = []
        self.done: Any = None
        self.timed_out: float | None = None
        self.stats: Any = None
        self.wall = 0.0

    def call_seconds(self) -> float:
        """The test's call phase in seconds, as ``nsbox_wall_seconds`` counts it: its
        call report's duration; when its process ended during the call, the time from
        the end of setup to the end of the box; 0 when the call did not run."""
        reports = {r.when: r for r in self.reports}
        if "call" in reports:
            return float(reports["call"].duration)
        setup = reports.get("setup")
        if setup is not None and setup.passed and "teardown" not in reports:
            return max(0.0, self.wall - float(setup.duration))
        return 0.0


def _log_warning(config: pytest.Config, msg: Any) -> None:
    """Replay a warning of the test's box through ``pytest_warning_recorded`` (as
    pytest-xdist's ``DSession.worker_warning_recorded``)."""
    import importlib

    try:
        category = getattr(importlib.import_module(msg.category_module), msg.category_name)
        if not (isinstance(category, type) and issubclass(category, Warning)):
            raise TypeError
    except Exception:
        category = UserWarning
    message = warnings.WarningMessage(category(msg.message), category, msg.filename,
                                      msg.lineno)
    config.hook.pytest_warning_recorded.call_historic(kwargs=dict(
        warning_message=message, when=msg.when, nodeid=msg.nodeid,
        location=tuple(msg.location) if msg.location else None))


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def crash_cause(outcome: Outcome, spec: BoxSpec) -> str | None:
    """Why the test's process ended before its reports did, in the user's words; None
    when it ended well.

    Memory is named only for what the OOM killer does: SIGKILL to the test's process, or
    the end of its box's PID 1, while the test's cgroup counted OOM kills. A process that
    exited, or died of another signal, is named so, with the kills the cgroup counted (a
    subprocess killed for memory before it) added as a note."""
    done = outcome.done
    stats = outcome.stats
    if outcome.timed_out is not None:
        return f"timed out after {outcome.timed_out:g} s"
    status: int | None = done.status if done is not None else None
    kills = int(stats.oom_kills) if stats and stats.oom_kills else 0
    signalled = status is not None and os.WIFSIGNALED(status)
    complete = any(r.when == "teardown" for r in outcome.reports)
    if kills and (status is None or (signalled and os.WTERMSIG(status) == signal.SIGKILL)):
        from ..units import format_size

        peak = f" (peak {format_size(stats.memory_peak)})" if stats.memory_peak else ""
        if spec.memory:
            cause = f"exceeded memory={short_size(spec.memory)}{peak}"
        else:
            cause = f"killed for memory with no memory limit of its own{peak}"
        return f"{cause}: {done.error}" if done is not None and done.error else cause
    if status is None:
        return str(done.error) if done is not None and done.error else \
            "its box ended before the test did"
    if signalled:
        cause = f"killed by {_signame(os.WTERMSIG(status))}"
    elif not complete:
        cause = f"its process exited with status {os.WEXITSTATUS(status)} before the test ended"
    else:
        return None
    return f"{cause} ({oom_note(kills, spec)})" if kills else cause


def oom_note(kills: int, spec: BoxSpec) -> str:
    """How many processes of the test's box the kernel killed for memory, and its limit."""
    limit = f"memory={short_size(spec.memory)}" if spec.memory else "no memory limit of its own"
    return (f"the kernel killed {kills} process{'es' if kills > 1 else ''} of the test's box "
            f"for memory, at {limit}")


def finish_reports(item: pytest.Item, outcome: Outcome, spec: BoxSpec,
                   properties: list[tuple[str, object]]) -> list[pytest.TestReport]:
    """The test's reports as pytest would have made them: a crash fails the phase it
    happened in (setup, call or teardown) with its cause, later phases are added as pytest
    adds them; the worker's teardown of wider scopes, its output and ``properties`` go into
    the teardown report."""
    reports: dict[str, pytest.TestReport] = {str(r.when): r for r in outcome.reports}
    cause = crash_cause(outcome, spec)
    if cause is not None:
        phase: Literal["setup", "call", "teardown"] = next(
            (w for w in _PHASES if w not in reports
                      and not (w == "call" and "setup" in reports
                               and not reports["setup"].passed)), "teardown")
        if phase == "teardown" and "teardown" in reports:
            phase = "call" if "call" in reports else "setup"
        message = f"nsbox isolate: {item.nodeid}: {cause}"
        reports[phase] = made_report(item, phase, "failed", message, outcome.wall)
    if "setup" not in reports:
        reports["setup"] = made_report(item, "setup", "passed", None, 0.0)
    if "teardown" not in reports:
        reports["teardown"] = made_report(item, "teardown", "passed", None, 0.0)
    done = outcome.done
    teardown = reports["teardown"]
    if done is not None and done.teardown is not None:
        from .messages import report_data

        wider = item.config.hook.pytest_report_from_serializable(
            config=item.config, data=report_data(done.teardown))
        if teardown.passed:
            teardown = wider
        else:
            teardown.sections.append(("nsbox isolate: tearing down wider scopes",
                                      str(wider.longrepr)))
    if done is not None:
        teardown.sections.extend(tuple(s) for s in done.sections)
    kills = int(outcome.stats.oom_kills) if outcome.stats and outcome.stats.oom_kills else 0
    failed = next((r for w, r in reports.items() if r.failed and w != "teardown"), None)
    if cause is None and kills and (failed or teardown.failed):
        (failed or teardown).sections.append(("nsbox isolate: OOM kills", oom_note(kills, spec)))
    teardown.user_properties.extend(properties)
    reports["teardown"] = teardown
    ordered = [reports[w] for w in _PHASES if w in reports]
    # Logged during the call, before its report, as they are without isolation.
    at = 1 if ordered and ordered[0].when == "setup" else 0
    return ordered[:at] + list(outcome.logged) + ordered[at:]


_PHASES: tuple[Literal["setup", "call", "teardown"], ...] = ("setup", "call", "teardown")


def made_report(item: pytest.Item, when: Literal["setup", "call", "teardown"],
                outcome: Literal["passed", "failed", "skipped"], message: str | None,
                duration: float) -> pytest.TestReport:
    """A report pytest did not make (the box's crash, a phase that never ran): ``when``
    with ``outcome`` and ``message`` as its ``longrepr``, ``duration`` seconds, ending now;
    location, keywords and ``user_properties`` from ``item``, as ``TestReport.from_item_and_call``
    takes them."""
    now = time.time()
    return pytest.TestReport(
        nodeid=item.nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
        outcome=outcome, longrepr=message, when=when, sections=[], duration=duration,
        start=now - duration, stop=now, user_properties=list(item.user_properties))
