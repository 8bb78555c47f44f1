"""A command running in a box, seen from the owner: pipes in, pipes out, a status socket.

The box's init forks the command and reports on the status socket (``protocol`` messages):
first ``Started`` (or ``ExecFailed``), then ``Exited`` with the wait status. Output is read with one
selector loop, in the caller's thread for ``run()`` and in a thread for ``spawn()``.

The loop is a ``PollSelector``: poll(2) has no FD_SETSIZE limit (``select()`` fails once a
descriptor number reaches 1024) and, unlike epoll, needs no descriptor of its own. When the
command has exited and its output is drained, every pipe and socket is closed; after
``wait()`` the ``Process`` holds only its ``RunResult``.
"""
from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import BoxError, CgroupError
from . import protocol
from ..model.results import RunResult

if TYPE_CHECKING:
    from .box import Box

# After the command exits, output still held open by its orphans is read this long.
DRAIN_GRACE = 0.5
# A killed command must report its exit within this bound.
KILL_GRACE = 10.0
STDERR_EXEC_PREFIX = "nsbox: "


class Process:
    """A command in a box, as ``Box.spawn`` returns it (``Box.run`` uses one too).

    ``pid`` is the command's PID inside the box's PID namespace (``None`` until the box's
    init has started it); ``args`` is the ``cmd`` as given; ``box`` its ``Box``. The
    command leads its own session and process group. ``wait()`` gives its ``RunResult``.
    """

    def __init__(self, box: Box, args: list[str] | str, request: protocol.Exec,
                 input: bytes | None, *, oom: Callable[[], int],
                 record: Callable[[Process, RunResult], None]) -> None:
        """``oom`` reads the box cgroup's OOM-kill counter; ``record`` gets the result once."""
        self.box = box
        self.args = args
        self.pid: int | None = None
        self._request: protocol.Exec | None = request
        self._input = input
        self._oom = oom
        self._record = record
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._status: int | None = None
        self._oom_before: int | None = None
        self._oom_after: int | None = None
        self._ended: float | None = None  # when the init reaped it (``Exited.ended``)
        self._exec_error: str | None = None
        self._exec_errno = 0
        self._timed_out = False
        self._result: RunResult | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def start(self, ctl: socket.socket, background: bool) -> None:
        stdin_r, self._stdin_w = os.pipe2(os.O_CLOEXEC)
        self._stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        self._stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        self._status_sock, theirs = protocol.socketpair()
        self._oom_before = self._oom_count()
        self._started = time.monotonic()
        if self._request is None:
            raise BoxError(f"command {self.args!r}: a Process starts once")
        try:
            protocol.send(ctl, self._request, [stdin_r, stdout_w, stderr_w, theirs.fileno()])
        except OSError as exc:
            for fd in (self._stdin_w, self._stdout_r, self._stderr_r):
                os.close(fd)
            self._status_sock.close()
            if exc.errno == errno.EMSGSIZE:
                raise BoxError(f"command too large to send to box {self.box.name!r} "
                               f"(argv and env must stay under 1 MiB)") from None
            raise BoxError(f"box {self.box.name!r} is gone: {exc}") from None
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
            theirs.close()
        if not self._input:
            os.close(self._stdin_w)
            self._stdin_w = -1
        else:
            os.set_blocking(self._stdin_w, False)
        self._sel: selectors.BaseSelector = selectors.PollSelector()
        self._sel.register(self._stdout_r, selectors.EVENT_READ, self._out)
        self._sel.register(self._stderr_r, selectors.EVENT_READ, self._err)
        self._sel.register(self._status_sock, selectors.EVENT_READ, None)
        if self._stdin_w >= 0:
            self._sel.register(self._stdin_w, selectors.EVENT_WRITE, None)
        self._input_view = memoryview(self._input or b"")
        self._first_message()
        if background:
            self._thread = threading.Thread(target=self._pump, args=(None,), daemon=True,
                                            name=f"nsbox-{self.box.name}-{self.pid}")
            self._thread.start()

    def _first_message(self) -> None:
        """Wait for the init's answer so ``pid`` is known when ``spawn()`` returns."""
        self._status_sock.settimeout(KILL_GRACE + 20)
        try:
            msg, _ = protocol.recv(self._status_sock)
        except (socket.timeout, OSError):
            msg = None
        finally:
            self._status_sock.settimeout(None)
        self._handle_status(msg)

    def _handle_status(self, msg: protocol.Message | None) -> None:
        """One message from the status socket (None: it closed). A kind the status socket
        never carries raises ``ProtocolError``."""
        if msg is None:
            if self._status is None:
                self._status = -1
                if self._exec_error is None:
                    self._exec_error = "the box ended before the command reported an exit status"
            self._unregister(self._status_sock)
        elif isinstance(msg, protocol.Started):
            self.pid = msg.pid
        elif isinstance(msg, protocol.ExecFailed):
            self._exec_error = msg.error
            self._exec_errno = msg.errno
        elif isinstance(msg, protocol.Exited):
            # The command's lifetime ends here: OOM kills later belong to later commands.
            self._oom_after = self._oom_count()
            self._status = msg.status
            self._ended = msg.ended
            self._unregister(self._status_sock)
        else:
            raise protocol.unexpected(msg, f"command {self.args!r} in box {self.box.name!r}")

    def _unregister(self, obj: Any) -> None:
        try:
            self._sel.unregister(obj)
        except (KeyError, ValueError):
            return
        if isinstance(obj, socket.socket):
            obj.close()
        else:
            os.close(obj)

    def _pump(self, deadline: float | None) -> bool:
        """Move data until the command has exited and output is drained, or ``deadline``."""
        drain_until: float | None = None
        while self._sel.get_map():
            now = time.monotonic()
            if self._status is not None:
                drain_until = drain_until or now + DRAIN_GRACE
                if now >= drain_until or not self._output_open():
                    break
            limit = min(x for x in (deadline, drain_until, now + 3600) if x is not None)
            if deadline is not None and now >= deadline:
                return False
            for key, _ in self._sel.select(max(0.0, limit - now)):
                self._event(key)
        self._release()
        self._done.set()
        return True

    def _release(self) -> None:
        """Close every pipe and socket still open (idempotent)."""
        for key in list((self._sel.get_map() or {}).values()):
            self._unregister(key.fileobj)
        self._sel.close()

    def _output_open(self) -> bool:
        return any(k.fileobj in (self._stdout_r, self._stderr_r) for k in self._sel.get_map().values())

    def _event(self, key: selectors.SelectorKey) -> None:
        if key.fileobj is self._status_sock:
            try:
                msg, _ = protocol.recv(self._status_sock)
            except OSError:
                msg = None
            self._handle_status(msg)
        elif key.fileobj == self._stdin_w:
            try:
                sent = os.write(self._stdin_w, self._input_view[:65536])
            except BlockingIOError:
                return
            except OSError:  # the command closed its stdin
                sent = len(self._input_view)
            self._input_view = self._input_view[sent:]
            if not self._input_view:
                self._unregister(self._stdin_w)
                self._stdin_w = -1
        else:
            chunk = os.read(key.fileobj, 65536)  # type: ignore[arg-type]
            if chunk:
                key.data.append(chunk)
            else:
                self._unregister(key.fileobj)

    # -- public ----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> RunResult:
        """Wait for the command and return its ``RunResult`` (the same one on every call).

        ``timeout`` is in seconds (``None``: no limit); past it the command's process group
        gets SIGKILL and the result has ``timed_out`` set. Raises ``BoxError`` when the box
        is gone, or the killed command does not report its exit within 10 s."""
        with self._lock:
            if self._result is not None:
                return self._result
            if self._thread is None:
                finished = self._pump(None if timeout is None else time.monotonic() + timeout)
            else:
                self._thread.join(timeout)
                finished = not self._thread.is_alive()
            if not finished:
                self._timed_out = True
                self.kill()
                if self._thread is None:
                    finished = self._pump(time.monotonic() + KILL_GRACE)
                else:
                    self._thread.join(KILL_GRACE)
                    finished = not self._thread.is_alive()
                if not finished:
                    if self._thread is None:
                        self._release()
                    raise BoxError(f"command {self.args!r} in box {self.box.name!r} did not exit "
                                   f"within {KILL_GRACE:.0f} s of SIGKILL")
            self._result = self._make_result()
            # Keep the result only: output chunks, input and the pump thread are let go.
            self._out, self._err, self._thread, self._request = [], [], None, None
            self._input, self._input_view = None, memoryview(b"")
            self._record(self, self._result)
            return self._result

    def poll(self) -> int | None:
        """The ``returncode`` (as ``RunResult.returncode``) once the command has finished
        and been collected, else ``None``; never blocks for a running command."""
        if self._result is not None:
            return self._result.returncode
        if self._thread is not None and self._done.is_set():
            return self.wait().returncode
        return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send signal ``sig`` (default SIGKILL) to the command's process group (it leads
        its own session). Nothing happens before it started or once its box is closed."""
        if self.pid is not None:
            self.box.kill_process(self.pid, sig)

    def detach(self) -> None:
        """The box is gone: stop waiting for anything more from it."""
        self._done.set()

    def _make_result(self) -> RunResult:
        status = self._status if self._status is not None else -1
        stderr = b"".join(self._err)
        if self._exec_error is not None:
            # As a shell reports it: 127 not found, 126 found but could not run.
            code = 127 if self._exec_errno in (errno.ENOENT, errno.ENOTDIR) else 126
            stderr += f"{STDERR_EXEC_PREFIX}{self._exec_error}\n".encode()
            status = code << 8
        if status == -1:
            returncode = -int(signal.SIGKILL)
        elif os.WIFSIGNALED(status):
            returncode = -os.WTERMSIG(status)
        else:
            returncode = os.WEXITSTATUS(status)
        return RunResult(args=self.args, returncode=returncode, stdout_bytes=b"".join(self._out),
                         stderr_bytes=stderr,
                         duration=max(0.0, (self._ended or time.monotonic()) - self._started),
                         oom_killed=self._oom_killed(), timed_out=self._timed_out)

    def _oom_count(self) -> int | None:
        """The box cgroup's OOM-kill counter; ``None`` once the box and its cgroup are gone."""
        try:
            return self._oom()
        except (CgroupError, OSError):
            return None

    def _oom_killed(self) -> bool:
        """Whether the kernel killed any process of the box for memory while this ran.

        Docker's ``OOMKilled``: moby ``daemon/monitor.go`` sets it on any OOM event of the
        container, which containerd raises when the cgroup's ``oom_kill`` count grows
        (``pkg/oom/v2/v2.go``; v1: the ``memory.oom_control`` eventfd), whichever process
        the kernel chose. Ours is per command: the count when the command was sent against
        the count when its exit arrived, so a kill of a child, of a background process, or
        of the command itself counts, and a kill before the command does not.
        """
        after = self._oom_after if self._oom_after is not None else self._oom_count()
        return self._oom_before is not None and after is not None and after > self._oom_before

    def __repr__(self) -> str:
        return f"<Process {self.args!r} pid={self.pid} in {self.box.name!r}>"
