"""``Box``: one running container, owned by the process that made it.

Creation order: state dirs and init layer, cgroup with limits, control socket, the box's
PID 1 forked by the zygote (a pidfd), wait for it to report the root built, the box record,
the network attachment; later, port forwards. Each step pushes its undo on the box's
``lifecycle.Undo`` as soon as it succeeded, so a start that fails half-way and ``close()``
undo exactly what was done, newest first: forwards, network, record, final stats, SIGKILL
to PID 1 through the pidfd (the kernel then kills the whole PID namespace; the mount
namespace and its overlay die with it) and the wait for it, the commands, the control
socket, the cgroup, the read-write layer. Every step runs even when one fails; one
``TeardownError`` then names every failure.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

from ..kernel.io import readable
from ..cgroups.base import Limits, Stats
from ..errors import (BoxClosed, BoxError, CommandFailed, HostNotSupported, SpecError,
                      TeardownError)
from ..lifecycle import Undo
from ..model.image import Image
from ..overlay import diff as overlay_diff
from .plan import (HOST_ROOT, BoxDirs, build_plan, host_binds, hosts_file, split_host_root,
                   write_host_top, write_init_layer)
from ..model.defaults import DEFAULT_PATH
from ..model.spec import BoxSpec, check_cpus_available
from ..kernel.proc import available_cpus
from .. import records
from ..kernel import caps, libc, userns
from ..network import netns
from ..network.netns import Fd
from . import protocol
from ..model import users
from .client import zygote
from .engine import Engine, check_host, default_engine
from .owner import as_agent, as_owner, netns_runner, remove_tree_as_owner
from .process import Process
from .uncontained import Uncontained
from ..model.results import Change, RunResult

START_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0


class Box:
    """A running box (a container, in runc's terms): its own PID, mount, UTS, IPC and
    network namespaces, a cgroup with its limits, and an overlayfs root whose lower layers
    are the image's and whose upper (read-write) layer is the box's own. Use it as a context
    manager or call ``close()``; see CONTRACT.md.

    Attributes: ``id`` (12 hex digits, random), ``name`` (the ``name`` key, else
    ``box-<id>``), ``hostname`` (the ``hostname`` key, else the name given, else
    ``nsbox-<id>``), ``image`` (the resolved ``Image``), ``pid`` (the host PID of the
    box's init, its PID 1), ``ip`` (its IPv4 address on a ``network="private"`` network as
    a dotted string, else ``None``), ``history`` (the ``RunResult`` of every command
    waited for, oldest first), ``spec`` (the validated ``BoxSpec``), ``closed``.
    """

    def __init__(self, image: str | None = None, *, name: str | None = None,
                 engine: Engine | None = None, group: object = None, **keys: Any) -> None:
        """Start a box; returns once its init has built the root and the network is up.

        ``image`` is an image reference (``ImageStore.get`` gives the resolution order);
        ``keys`` are the marker's keys (README "The marker"): ``memory`` (int bytes, or
        ``"64M"``), ``cpus`` (cores, as ``docker run --cpus``), ``pids`` (most processes),
        ``network`` (``"none"``, ``"private"``, ``"host"``), ``hostname``, ``env``
        (str -> str), ``user``, ``binds`` (host path -> ``"box/path[:ro|:rw]"``),
        ``timeout`` (seconds, the default of each ``run``), ``rate``, ``latency``,
        ``jitter``, ``loss`` (link shaping, private networks), ``privileged``,
        ``cap_add``, ``cap_drop``, ``seccomp``, ``isolate``. ``group`` is as in
        ``from_spec``; ``engine`` defaults to this process's shared one.

        Raises ``SpecError`` (source ``Box``) for an unknown key or a bad value, and for
        more ``cpus`` than this host has; ``HostNotSupported`` when this host cannot run
        boxes; ``ImageError`` when ``image`` cannot be resolved, built, loaded or pulled;
        ``BoxError`` when the box does not come up within 30 s or its init reports a
        setup failure (``NetworkError``, a ``BoxError``, for its network; ``CgroupError``
        for its cgroup). What the failed start had acquired is released first; a failure
        of that is added to the error as a note.
        """
        kwargs = dict(keys)
        if image is not None:
            kwargs["image"] = image
        if name is not None:
            kwargs["name"] = name
        spec = BoxSpec.from_kwargs(kwargs, source="Box")
        check_cpus_available(spec.cpus, available_cpus(), "Box")
        self._setup(spec, engine or default_engine(), group=group)

    @classmethod
    def from_spec(cls, spec: BoxSpec, *, engine: Engine | None = None, label: str | None = None,
                  group: object = None) -> Box:
        """Start a box from an already validated spec (the fixtures' path).

        ``group`` names the boxes that share one ``network="private"`` network (the plugin
        passes the test's node id); ``None`` is this process's default group; ``label``
        names a kept box's directory (default: its name). Raises ``SpecError`` (source
        ``spec``) for more ``cpus`` than this host has, and otherwise what ``Box()`` raises.
        """
        check_cpus_available(spec.cpus, available_cpus(), "spec")
        box = cls.__new__(cls)
        box._setup(spec, engine or default_engine(), label=label, group=group)
        return box

    # -- lifecycle -------------------------------------------------------------------
    def _setup(self, spec: BoxSpec, engine: Engine, label: str | None = None,
               group: object = None) -> None:
        check_host()
        self.spec = spec
        self.id = secrets.token_hex(6)
        self.name = spec.name or f"box-{self.id}"
        self.hostname = spec.hostname or spec.name or f"nsbox-{self.id}"
        self.label = label or self.name
        self.ip: str | None = None
        self.pid = 0
        self.history: list[RunResult] = []
        self.final_stats: Stats | None = None
        self.kept_at: str | None = None
        self._engine = engine
        self._overlay_helper: str | None = None  # fuse-overlayfs, rootless fallback
        self._closed = False
        self._close_lock = threading.Lock()
        self._processes: list[Process] = []
        self._ctl: socket.socket | None = None
        self._pidfd = -1
        self._cgroup: Any = None
        self.group = group
        # Every acquisition of _start pushes its undo here; close() unwinds it.
        self._undo = Undo(f"box {self.name!r}", closed_error=BoxClosed)
        self._keep = False  # close(keep=True): the undo of the box's dirs keeps them
        self.dirs = BoxDirs(os.path.join(engine.dirs.boxes, self.id))
        self._handle = _NetworkHandle(self)
        try:
            self.image: Image = engine.store.get(spec.image)
            self._start()
        except BaseException as exc:
            self._closed = True
            try:
                self._undo.close()
            except TeardownError as failed:  # the start's error is the one to raise
                exc.add_note(str(failed))
            raise

    def _start(self) -> None:
        engine = self._engine
        engine.dirs.ensure_run()
        os.makedirs(engine.dirs.boxes, 0o700, exist_ok=True)
        os.mkdir(self.dirs.base, 0o700)
        self._undo.callback(self._release_dirs)
        for d in (self.dirs.upper, self.dirs.work, self.dirs.root):
            os.mkdir(d, 0o755)
        binds = ((host_binds(engine.rootdir) if self.image.from_host_os else [])
                 + list(self.spec.binds))
        write_init_layer(self.dirs, self.hostname, hosts_file(self.hostname), binds)
        limits = Limits(memory=self.spec.memory, cpus=self.spec.cpus, pids=self.spec.pids)
        self._cgroup = engine.box_cgroup(f"nsbox-{self.id}", limits)
        self._undo.callback(self._cgroup.destroy, timeout=KILL_TIMEOUT)
        spec = self.spec
        keep = None if spec.privileged else caps.resolve(spec.cap_add, spec.cap_drop, False)
        rootless = userns.rootless()
        host_root = helper = None
        if rootless:
            try:
                helper = self._overlay_helper = userns.overlay_helper()
            except userns.UsernsError as exc:
                raise HostNotSupported(exc.strerror or str(exc)) from None
        if rootless and helper is None and HOST_ROOT in self.image.layer_dirs:
            host_root = split_host_root([*self.image.layer_dirs, self.dirs.init])
            write_host_top(self.dirs, host_root)
        plan = build_plan(box_id=self.id, hostname=self.hostname, image=self.image,
                          dirs=self.dirs, binds=binds, cgroup_procs=self._cgroup.procs_files(),
                          network=spec.network, privileged=spec.privileged, caps=keep,
                          seccomp=spec.seccomp, rootless=rootless, host_root=host_root,
                          overlay_helper=helper)
        ours, theirs = protocol.socketpair()
        self._ctl = ours
        self._undo.callback(ours.close)
        # Commands still running lose their box; the box lets go of them.
        self._undo.callback(self._detach_processes)
        requested = time.monotonic()
        try:
            self.pid, self._pidfd = zygote().create(plan, theirs)
        finally:
            theirs.close()
        if isinstance(self._cgroup, Uncontained):
            self._cgroup.track(self.pid)
        self._undo.callback(self._kill_init)
        self._undo.callback(self._read_final_stats)  # before the kill: what it used
        if not readable([ours.fileno()], START_TIMEOUT):
            raise BoxError(f"box {self.name!r} did not come up within {START_TIMEOUT:.0f} s")
        msg, _fds = protocol.recv(ours)
        marks = msg.marks if isinstance(msg, protocol.BoxReady) else ()
        self.start_marks = [("requested", requested), *marks, ("ready", time.monotonic())]
        if not isinstance(msg, protocol.BoxReady):
            if msg is not None and not isinstance(msg, protocol.SetupFailed):
                raise protocol.unexpected(msg, f"box {self.name!r} starting")
            why = msg.error if msg else "its init died during setup"
            raise BoxError(f"box {self.name!r} (image {self.spec.image!r}) failed to start: {why}")
        self._write_owner()
        self._undo.callback(self._retire_record)
        self._attach_network()

    def _attach_network(self) -> None:
        """Join the group's private network (its undo goes on the box's stack through the
        handle); ``none`` and ``host`` need nothing more."""
        from ..network import attach

        attach(self._handle)

    def _write_owner(self, kept: dict[str, Any] | None = None) -> None:
        """The box record (``records.py``): who owns this box, for ``gc`` after a crash, and
        for ``enter`` its default environment and working directory; ``kept`` adds the
        entry of a kept box (``records.kept_entry``)."""
        # created: when the box came up, also in the record rewritten when it is kept
        self._created: float = getattr(self, "_created", None) or time.time()
        records.write(self.dirs.base, records.new_record(
            box_id=self.id, owner_lock=self._engine.owner_lock(), pid=self.pid, name=self.name,
            image=self.spec.image, hostname=self.hostname, created=self._created,
            env=self._env(None), workdir=self.image.workdir, kept=kept))

    def close(self, keep: bool = False) -> None:
        """Undo the box's start, newest step first: its forwards and network, its record
        (kept boxes get their kept entry), its final stats, SIGKILL to its init through
        the pidfd (waited for, bounded), its commands and control socket, its cgroup,
        then its directory (deleted, or moved to ``<run>/kept/`` with ``keep``).

        Every step runs even when one fails; ``TeardownError`` (a ``BoxError`` and an
        ``ExceptionGroup``) then holds every failure. The kill is waited for at most 10 s
        (``BoxError`` if the init survives). Idempotent: a second call returns at once.
        ``kept_at`` is then the kept read-write layer's host path (``keep=True``).
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._keep = keep
            self._undo.close()

    # The undo steps of _start, in the order they are pushed.
    def _release_dirs(self) -> None:
        if not os.path.isdir(self.dirs.base):
            return
        try:
            if self._keep:
                self.kept_at = self._keep_layers()
            else:
                remove_tree_as_owner(self.dirs.base)
        except OSError as exc:
            raise BoxError(f"cannot remove {self.dirs.base}: {exc}") from exc

    def _detach_processes(self) -> None:
        running, self._processes = self._processes, []
        for proc in running:
            proc.detach()

    def _kill_init(self) -> None:
        pidfd, self._pidfd = self._pidfd, -1
        try:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(KILL_TIMEOUT * 1000):
                raise BoxError(f"box {self.name!r}: its init (pid {self.pid}) survived "
                               f"SIGKILL for {KILL_TIMEOUT} s")
        finally:
            os.close(pidfd)

    def _read_final_stats(self) -> None:
        try:
            self.final_stats = self._cgroup.stats()
        except Exception:  # stats are a courtesy for reports; teardown goes on
            self.final_stats = None

    def _retire_record(self) -> None:
        """The record lives in the box's directory and goes with it; a kept box's record
        gets the kept entry (``records.kept_entry``) that ``enter`` needs."""
        if self._keep:
            self._write_owner(kept=records.kept_entry(
                label=self.label, rootdir=self._engine.rootdir, store=self._engine.dirs.store,
                image=self.image, spec=self.spec, hostname=self.hostname))

    def _keep_layers(self) -> str:
        """Move the box's layers to ``<run>/kept/<label>-<id>/`` (its record already names
        what a new box over them needs: ``python -m pytest_nsbox enter``); returns the
        kept read-write layer's path."""
        engine = self._engine
        dest = os.path.join(engine.dirs.kept, records.dir_name(self.label, self.id))
        os.makedirs(engine.dirs.kept, 0o700, exist_ok=True)
        remove_tree_as_owner(self.dirs.work)
        os.rename(self.dirs.base, dest)
        return os.path.join(dest, "upper")

    def __enter__(self) -> Box:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pid={self.pid}"
        return f"<Box {self.name!r} image={self.spec.image!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    # -- commands --------------------------------------------------------------------
    def run(self, cmd: list[str] | str, *, input: str | bytes | None = None,
            timeout: float | None = None, check: bool = False,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            user: str | int | None = None) -> RunResult:
        """Run ``cmd`` to completion and return its ``RunResult``.

        ``cmd``: a list of str is exec'd as is (looked up in the box's ``PATH``); a str
        runs under ``/bin/sh -c``. ``input`` goes to stdin (str as UTF-8), then stdin
        closes. ``timeout`` (seconds; default the spec's ``timeout``, else none): past it
        the command's process group gets SIGKILL and ``timed_out`` is set. ``env`` adds
        to the image's and the spec's environment; ``cwd`` (default the image's
        ``WORKDIR``) and ``user`` (``name``, ``uid``, ``name:group``, ``uid:gid``; runc's
        ``GetExecUser`` rules) are resolved in the box. A missing program exits 127, one
        that cannot run 126 (as a shell does), with an ``nsbox: ...`` line on stderr.

        Raises ``CommandFailed`` with ``check=True`` for a non-zero status or a timeout;
        ``SpecError`` (source ``run``) for a bad ``cmd``, ``input``, ``env``, ``cwd`` or
        ``user``; ``BoxClosed`` after ``close()``; ``BoxError`` when the box is gone or a
        killed command does not report its exit within 10 s.
        """
        proc = self._exec(cmd, input=input, env=env, cwd=cwd, user=user, background=False)
        result = proc.wait(timeout if timeout is not None else self.spec.timeout)
        if check and (result.returncode != 0 or result.timed_out):
            raise CommandFailed(result)
        return result

    def spawn(self, cmd: list[str] | str, *, input: str | bytes | None = None,
              env: Mapping[str, str] | None = None, cwd: str | None = None,
              user: str | int | None = None) -> Process:
        """Start ``cmd`` in the background and return its ``Process`` (``pid`` already
        known); its output is collected until ``Process.wait()``. Arguments and errors are
        those of ``run`` (there is no ``timeout`` or ``check``: ``wait(timeout)`` has it).
        """
        return self._exec(cmd, input=input, env=env, cwd=cwd, user=user, background=True)

    def _exec(self, cmd: list[str] | str, *, input: str | bytes | None,
              env: Mapping[str, str] | None, cwd: str | None, user: str | int | None,
              background: bool) -> Process:
        if self._closed or self._ctl is None:
            raise BoxClosed(f"box {self.name!r} is closed")
        argv = _argv(cmd)
        data = input.encode() if isinstance(input, str) else input
        if data is not None and not isinstance(data, bytes):
            raise SpecError("input", input, "not str or bytes", "'text'", source="run")
        request = protocol.Exec(
            argv=tuple(argv), env=self._env(env),
            cwd=_box_path(cwd, "cwd") if cwd is not None else self.image.workdir,
            user=self._user(user))
        proc = Process(self, cmd, request, data, oom=self._cgroup.oom_kills,
                       record=self._finished)
        self._processes.append(proc)
        proc.start(self._ctl, background=background)
        return proc

    def _finished(self, proc: Process, result: RunResult) -> None:
        """A command was waited for: keep its result, let go of its ``Process``."""
        self.history.append(result)
        try:
            self._processes.remove(proc)
        except ValueError:  # the box was closed meanwhile
            pass

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        # No HOME here: the box's init takes it from the box's /etc/passwd for the
        # command's user unless one of these sets it (runc's prepareEnv).
        env = {"PATH": DEFAULT_PATH,
               "HOSTNAME": self.hostname}
        env.update(self.image.env)
        env.update(self.spec.env)
        for key, value in (extra or {}).items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise SpecError("env", key, "not a variable name", "{'A': '1'}", source="run")
            if not isinstance(value, str) or "\0" in value:
                raise SpecError("env", {key: value}, "values must be str without NUL",
                                "{'A': '1'}", source="run")
            env[key] = value
        return env

    def _user(self, user: str | int | None) -> str | None:
        """Who a command runs as: ``run(user=)``, else the spec's ``user``, else the image's
        ``USER`` (its config's ``User``), else ``None``: root. Looked up in the box by its
        init (model/users.py, runc's rules)."""
        try:
            chosen = users.check(user)
        except ValueError as exc:
            raise SpecError("user", user, str(exc), users.EXAMPLE, source="run") from None
        if chosen is None:
            chosen = self.spec.user
        if chosen is None:
            image_user = ((self.image.config or {}).get("config") or {}).get("User")
            chosen = str(image_user) if image_user else None
        return chosen

    def kill_process(self, pid: int, sig: int = signal.SIGKILL) -> None:
        if self._ctl is not None and not self._closed:
            try:
                protocol.send(self._ctl, protocol.Kill(pid=pid, signal=int(sig)))
            except OSError:
                pass

    # -- files -----------------------------------------------------------------------
    # Every OSError of the file API names the path in the box (``exc.filename``) and the
    # box, never a descriptor of ours: ``IsADirectoryError: [Errno 21] Is a directory (a
    # path in box 'db'): '/d'``, as ``open()`` names the path it was given.
    def _open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if self._closed:
            raise BoxClosed(f"box {self.name!r} is closed")
        rel = _box_path(path, "path")
        try:
            proc_dir = os.open(f"/proc/{self.pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BoxClosed(f"box {self.name!r}: its init has exited") from None
        try:
            if readable([self._pidfd], 0):
                raise BoxClosed(f"box {self.name!r}: its init has exited")
            root = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_dir)
        finally:
            os.close(proc_dir)
        try:
            with self._path_errors(rel):
                if self._overlay_helper is not None:
                    # A FUSE root (fuse-overlayfs) lets in no process outside the user
                    # namespace that mounted it (fuse.rst "allow_other"): the agent,
                    # inside it, looks the path up; the descriptor comes back here.
                    return as_agent(partial(open_beneath, Fd(root), rel, flags, mode),
                                    f"box {self.name!r}: opening {rel}")
                return open_beneath(root, rel, flags, mode)
        finally:
            os.close(root)

    @contextlib.contextmanager
    def _path_errors(self, path: str) -> Iterator[None]:
        """Re-raise an OSError of an operation on box path ``path`` (normalized) as the
        same kind of OSError naming that path and this box."""
        try:
            yield
        except OSError as exc:
            if exc.errno is None:
                raise
            raise OSError(exc.errno, f"{os.strerror(exc.errno)} (a path in box {self.name!r})",
                          path) from None

    def read_bytes(self, path: str) -> bytes:
        """The whole content of file ``path`` in the box.

        ``path`` is resolved with the box's root as ``/`` (``openat2(RESOLVE_IN_ROOT)``):
        relative paths start at ``/`` as ``docker cp``'s do, ``..`` stops at ``/``, a
        trailing ``/`` requires a directory. Raises the ``OSError`` subclass of the fault
        (``FileNotFoundError``, ``IsADirectoryError``, ``PermissionError``,
        ``NotADirectoryError``, ...) with ``filename`` the box path; ``SpecError`` for a
        path that is not a str; ``BoxClosed`` after ``close()`` or once the init exited.
        """
        fd = self._open(path, os.O_RDONLY)
        chunks: list[bytes] = []
        try:
            with self._path_errors(_box_path(path, "path")):  # a directory fails here
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """``read_bytes(path)`` decoded (undecodable bytes become U+FFFD); its errors."""
        return self.read_bytes(path).decode(encoding, errors="replace")

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or replace file ``path`` in the box (``mode``: its permission bits
        when created, less the calling process's umask; an existing file keeps its mode).

        Path rules and errors as ``read_bytes``: ``FileNotFoundError`` when its directory
        is missing, ``IsADirectoryError`` for a directory, ``OSError`` ENOSPC/EFBIG as
        the kernel reports them; ``SpecError`` when ``data`` is not bytes-like.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SpecError("data", type(data).__name__, "not bytes", "b'text'", source="write_bytes")
        fd = self._open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        view = memoryview(data).cast("B")
        try:
            with self._path_errors(_box_path(path, "path")):  # e.g. ENOSPC, EFBIG
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def write_text(self, path: str, text: str, encoding: str = "utf-8", mode: int = 0o644) -> None:
        """``write_bytes`` of ``text`` encoded; ``SpecError`` when ``text`` is not a str."""
        if not isinstance(text, str):
            raise SpecError("text", type(text).__name__, "not str", "'text'", source="write_text")
        self.write_bytes(path, text.encode(encoding), mode)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the box (a dangling symlink does not: it is followed).
        ``False`` for ENOENT and ENOTDIR; other faults raise as in ``read_bytes``, e.g.
        ``OSError`` ELOOP for a symlink loop; ``BoxClosed`` after ``close()``."""
        try:
            os.close(self._open(path, os.O_PATH))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def listdir(self, path: str = "/") -> list[str]:
        """The sorted entry names (without ``.`` and ``..``) of directory ``path`` in the
        box; errors as ``read_bytes`` (``NotADirectoryError`` for a file)."""
        fd = self._open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with self._path_errors(_box_path(path, "path")):
                return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    # -- inspection ------------------------------------------------------------------
    def diff(self) -> list[Change]:
        """What the box changed against its image, like ``docker diff``: a sorted list of
        ``Change`` (``kind`` ``A`` added, ``C`` changed, ``D`` deleted; parents of a change
        are ``C``; the init layer's ``/etc/hosts``, ``/etc/hostname`` and
        ``/etc/resolv.conf`` never appear). ``BoxClosed`` once the read-write layer is gone.
        """
        if not os.path.isdir(self.dirs.upper):
            raise BoxClosed(f"box {self.name!r} is closed; its read-write layer is gone")
        # The init layer is part of what the box started from, not a change it made.
        # Rootless, what the box's non-root users made may be readable by its user
        # namespace only: the agent reads it then (owner.as_owner).
        layers = [*self.image.layer_dirs, self.dirs.init]
        found = as_owner(partial(overlay_diff.changes, self.dirs.upper, layers),
                         f"box {self.name!r}: reading its read-write layer")
        if self._overlay_helper is None:
            return found
        return fuse_markers(found, layers)

    def commit(self, tag: str | None = None) -> Image:
        """A new image whose top layer is this box's read-write layer (deletions kept as
        OCI whiteouts, replaced directories as opaque ones), as ``docker commit`` makes
        it; ``tag`` (e.g. ``"myapp:v1"``) names it in the store. The box keeps running.
        Raises ``ImageError`` for a closed box or a bad ``tag`` (CONTRACT.md)."""
        from .commit import commit_box

        return commit_box(self, tag)

    def stats(self) -> Stats:
        """What the box's cgroup used so far (``Stats``: bytes, CPU seconds, counts);
        after ``close()`` the last reading taken before its init was killed. Raises
        ``BoxClosed`` after ``close()`` when no reading could be taken, ``CgroupError``
        when a cgroup file cannot be read."""
        if self._closed:
            if self.final_stats is None:
                raise BoxClosed(f"box {self.name!r} is closed")
            return self.final_stats
        return self._cgroup.stats()  # type: ignore[no-any-return]

    # -- network
    def connect(self, port: int, timeout: float | None = None) -> socket.socket:
        """A connected TCP socket (the caller closes it) to ``port`` in the box's network
        namespace, whatever its ``network`` mode. Without ``timeout``: one try,
        ``PortRefused`` (a ``ConnectionRefusedError``) if nothing listens; with one
        (seconds): retried with backoff, ``PortTimeout`` (a ``TimeoutError``) when the
        time is up. ``BoxClosed`` if the box closes meanwhile; ``SpecError`` for a port
        outside 1-65535 or a timeout that is not a number above 0."""
        from ..network import reach

        return reach.connect(self._handle, port, timeout)

    def forward(self, port: int) -> tuple[str, int]:
        """The box's TCP ``port`` exposed on the host's loopback, until the box closes:
        returns the ``("127.0.0.1", host_port)`` to connect to (like ``docker run -p
        127.0.0.1::port``). Raises ``BoxClosed`` for a closed box, ``SpecError`` for a port
        outside 1-65535; ``OSError`` if the host socket cannot be made."""
        from ..network import reach

        return reach.forward(self._handle, port)

    def wait_for_port(self, port: int, timeout: float) -> None:
        """Return once something listens on TCP ``port`` in the box (read from its
        ``/proc/net/tcp``/``tcp6``; it never connects, so a one-shot server is not used up).
        Raises ``PortTimeout`` after ``timeout`` seconds, ``BoxClosed`` if the box closes,
        ``SpecError`` for a bad port or timeout."""
        from ..network import reach

        reach.wait_for_port(self._handle, port, timeout)


class _NetworkHandle:
    """The box as its network sees it (``network.handle.BoxHandle``): what ``attach`` and
    ``reach`` read, and ``on_close`` to push their undo on the box's stack."""

    def __init__(self, box: Box) -> None:
        self._box = box

    @property
    def id(self) -> str:
        return self._box.id

    @property
    def name(self) -> str:
        return self._box.name

    @property
    def hostname(self) -> str:
        return self._box.hostname

    @property
    def pid(self) -> int:
        return self._box.pid

    @property
    def ip(self) -> str | None:
        return self._box.ip

    @property
    def spec(self) -> BoxSpec:
        return self._box.spec

    @property
    def group(self) -> object:
        return self._box.group

    @property
    def run_dir(self) -> str:
        return self._box._engine.dirs.run

    @property
    def netns_runner(self) -> netns.Runner:
        return netns_runner()

    def owner_lock(self) -> str:
        return self._box._engine.owner_lock()

    def alive(self) -> bool:
        """Open, and its init still runs (its pidfd is not readable yet)."""
        box = self._box
        pidfd = box._pidfd
        if box.closed or pidfd < 0:
            return False
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return not poller.poll(0)

    def set_ip(self, ip: str) -> None:
        self._box.ip = ip

    def write_text(self, path: str, text: str) -> None:
        self._box.write_text(path, text)

    def on_close(self, undo: Callable[[], object]) -> None:
        self._box._undo.callback(undo)


def open_beneath(root: int, path: str, flags: int, mode: int) -> int:
    """``path`` of the box whose root is open as ``root``, opened with ``flags``
    (``openat2(RESOLVE_IN_ROOT)``: nothing of it can lead out); an ``Fd`` (it may be
    opened in the agent and travel back)."""
    return Fd(libc.openat2(root, path.lstrip("/") or ".", flags, mode))


def fuse_markers(changes: list[Change], layers_bottom_first: list[str]) -> list[Change]:
    """``changes`` of an upper directory fuse-overlayfs wrote, without its in-directory
    markers (``images.layers._copy_marker``): ``.wh..wh..opq`` and a ``.wh..opq``
    whiteout go (the directory's xattr already says it is opaque), a file ``.wh.NAME``
    is the deletion ``D`` of ``NAME`` where the image has one."""
    from ..images.layers import OPAQUE_MARKER, WHITEOUT_PREFIX
    from ..overlay.view import lookup

    lower = list(reversed(layers_bottom_first))
    out: dict[str, str] = {}
    for change in changes:
        parent, _, name = change.path.rpartition("/")
        if not name.startswith(WHITEOUT_PREFIX):
            out.setdefault(change.path, change.kind)
            continue
        target = name[len(WHITEOUT_PREFIX):]
        if name == OPAQUE_MARKER or target.startswith(WHITEOUT_PREFIX):
            continue
        path = f"{parent}/{target}"
        if lookup(lower, path.strip("/").split("/")) is not None:
            out[path] = "D"
    return [Change(path=p, kind=k) for p, k in sorted(out.items())]


def _argv(cmd: list[str] | str) -> list[str]:
    if isinstance(cmd, str):
        argv = ["/bin/sh", "-c", cmd]
    elif isinstance(cmd, (list, tuple)) and cmd and all(isinstance(a, str) for a in cmd):
        argv = list(cmd)
    else:
        raise SpecError("cmd", cmd, "not a non-empty list of str or a shell string",
                        "['ls', '-l'] or 'ls -l | wc -l'", source="run")
    for arg in argv:
        if "\0" in arg:
            raise SpecError("cmd", cmd, "an argument holds a NUL byte", "['ls', '-l']",
                            source="run")
    return argv


def _box_path(path: str, key: str) -> str:
    """An absolute, normalized box path; relative paths start at ``/`` as ``docker cp``'s
    do (never at the image's WORKDIR), and ``..`` stops at ``/``. A trailing ``/`` is kept,
    so a path that must be a directory still fails on a file (docker cp does the same)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\0" in path:
        raise SpecError(key, path, "not a path inside the box", "'/etc/hostname'", source="box")
    clean = posixpath.normpath(posixpath.join("/", path))
    if clean.startswith("//"):  # normpath keeps a leading '//' (POSIX leaves it open)
        clean = "/" + clean.lstrip("/")
    if path.endswith(("/", "/.")) and clean != "/":
        clean += "/"
    return clean
