"""The box's PID 1: builds the root from a mount plan, then runs commands on request.

It starts as a fork of the zygote and never imports anything after ``pivot_root`` (the box
may hold no Python at all), so every module it needs is imported at the top. It imports
nothing from pytest. Its life is tied to its owner: when the control socket reaches EOF
(the pytest process closed the box or died), PID 1 exits and the kernel kills every other
process of the PID namespace.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from ..kernel import caps, libc, proc, seccomp
from . import protocol
from .protocol import BoxPlan, Confinement, Exec, Kill, MountOp
from ..model import users
from ..model.defaults import DEFAULT_PATH
from .loop import ChildServer

_NS_FLAGS = {
    "mnt": libc.CLONE_NEWNS,
    "uts": libc.CLONE_NEWUTS,
    "ipc": libc.CLONE_NEWIPC,
    "net": libc.CLONE_NEWNET,
    "cgroup": libc.CLONE_NEWCGROUP,
}

#: The OOM scores (``oom_score_adj``) of the init and of each command, as ``_oom_setup``
#: chose them; None where the init may not change its own.
_OOM_SCORES: tuple[int, int] | None = None
_KEEP: list[int] | None = None  # the box's capabilities, when it is not privileged

# <linux/sockios.h>, <net/if.h>
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


# Made ahead of the request by a spare (see ``prepare``): every namespace but the cgroup
# namespace, which must be made after joining the box's cgroup to be rooted there.
PREPARED = ("mnt", "uts", "ipc", "net")
# In a user namespace (rootless) the network namespace waits for the plan: a box with
# network="host" could not go back to the host's, which that user namespace does not own.
PREPARED_ROOTLESS = ("mnt", "uts", "ipc")


def prepare(host_netns: int, namespaces: tuple[str, ...] = PREPARED) -> None:
    """Ahead-of-time work of a spare box process, done before it knows its plan: the
    ``namespaces`` (``PREPARED``, or ``PREPARED_ROOTLESS``) made."""
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    flags = 0
    for name in namespaces:
        flags |= _NS_FLAGS[name]
    libc.unshare(flags)
    # Private before the first mount: nothing we mount may propagate to the host.
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    global _HOST_NETNS, _PREPARED_NET
    _HOST_NETNS = host_netns
    _PREPARED_NET = "net" in namespaces


_HOST_NETNS = -1
_PREPARED_NET = True


def boot(plan: BoxPlan, ctl_fd: int) -> NoReturn:
    """Entry point in the (prepared) child that is PID 1 of its namespace."""
    code = 1
    try:
        ctl = socket.socket(fileno=ctl_fd)
        marks: list[tuple[str, float]] = [("plan received", time.monotonic())]
        try:
            _setup(plan, marks)
        except BaseException as exc:  # reported whole to the owner, never swallowed
            protocol.send(ctl, protocol.SetupFailed(error=_describe(exc)))
            os._exit(1)
        # Where setup time goes, for ci/bench's profile: (step, monotonic seconds).
        protocol.send(ctl, protocol.BoxReady(marks=tuple(marks)))
        _Init(ctl).serve()
        code = 0
    except BaseException:
        traceback.print_exc()
    os._exit(code)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc) if exc.filename is None else f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, LookupError) and exc.args:
        return str(exc.args[0])
    return f"{type(exc).__name__}: {exc}"


def _setup(plan: BoxPlan, marks: list[tuple[str, float]]) -> None:
    for procs in plan.cgroup_procs:
        _write(procs, "0")
    marks.append(("cgroup joined", time.monotonic()))
    if "cgroup" in plan.namespaces:
        libc.unshare(libc.CLONE_NEWCGROUP)
    if "net" not in plan.namespaces and _PREPARED_NET:
        libc.setns(_HOST_NETNS, libc.CLONE_NEWNET)  # network="host"
    elif "net" in plan.namespaces and not _PREPARED_NET:
        libc.unshare(libc.CLONE_NEWNET)
    os.close(_HOST_NETNS)
    marks.append(("namespaces", time.monotonic()))
    root = plan.root
    if plan.overlay_helper:
        _fuse_overlay(plan.overlay_helper, plan.overlay, root)
    else:
        libc.mount("nsbox", root, "overlay", plan.overlay_flags, plan.overlay)
    marks.append(("overlay", time.monotonic()))
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for op in plan.ops:
            run_op(rootfd, op)
            if plan.trace_ops:
                marks.append((f"{op.kind} {op.dest}", time.monotonic()))
    finally:
        os.close(rootfd)
    marks.append(("mount plan", time.monotonic()))
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    marks.append(("pivot_root", time.monotonic()))
    libc.sethostname(plan.hostname)
    if "net" in plan.namespaces:
        loopback_up()
    marks.append(("hostname, lo", time.monotonic()))
    _oom_setup()  # before _confine drops CAP_SYS_RESOURCE
    # Not dumpable: nothing in the box may open /proc/1/exe (the host's python binary) or
    # ptrace PID 1 (the class of runc CVE-2019-5736). Commands are new execs: dumpable.
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
    _confine(plan.confine)
    marks.append(("confined", time.monotonic()))


def _fuse_overlay(program: str, options: str, root: str) -> None:
    """Mount the root with ``program`` (fuse-overlayfs), which forks the daemon that serves
    it and exits once it is mounted; the daemon, a process of this PID namespace whose
    parent is gone, is reaped here and dies with the box. Raises ``OSError`` with its exit
    status when it fails."""
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(program, [program, "-o", options, root], {"PATH": DEFAULT_PATH},
                             file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                           (os.POSIX_SPAWN_DUP2, null, 1)])
    finally:
        os.close(null)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(errno.EIO, f"{program} -o {options} {root} failed: exit status "
                                 f"{os.waitstatus_to_exitcode(status)}")


def _confine(confine: Confinement) -> None:
    """Confine PID 1 itself: every command it starts (spawned or forked) inherits this.

    Capabilities first (dropping needs CAP_SETPCAP), then no_new_privs, then the seccomp
    filter, which from then on also guards the init.
    """
    global _KEEP
    keep = confine.caps
    if keep is not None:
        _KEEP = list(keep)
        caps.drop_bounding(keep, _LAST_CAP or caps.last_cap())
        # The init keeps SETUID/SETGID for `run(user=...)` even when the box drops them;
        # with no_new_privs a root exec gets no more than the bounding set: exactly keep.
        caps.limit(set(keep) | {caps.SETUID, caps.SETGID})
    if confine.no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    if confine.seccomp:
        seccomp.install(_filter(keep or ()))


_FILTERS: dict[tuple[int, ...], bytes] = {}


def _filter(keep: list[int] | tuple[int, ...]) -> bytes:
    """The seccomp program for these capabilities; the zygote builds the default one once."""
    key = tuple(sorted(keep))
    program = _FILTERS.get(key)
    if program is None:
        program = _FILTERS[key] = seccomp.build(caps=key)
    return program


_LAST_CAP = 0


def warm() -> None:
    """Work every box would repeat, done once in the zygote before it forks any."""
    global _LAST_CAP
    _LAST_CAP = caps.last_cap()
    _filter(caps.resolve([], [], False))


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    except OSError as exc:
        raise OSError(exc.errno, f"writing {data!r} to {path} failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def _open_in_root(rootfd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open a path of the box relative to its root: a link in the image cannot lead out."""
    return libc.openat2(rootfd, path.lstrip("/") or ".", flags)


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def run_op(rootfd: int, op: MountOp) -> None:
    """Run one mount op on the root opened as ``rootfd``. Raises ``ValueError`` for a kind
    no handler exists for (never skipped), ``OSError`` for a step that fails; a missing
    ``dest`` of an ``allow_missing`` op skips it (``_open_dest``)."""
    handler = _OPS.get(op.kind)
    if handler is None:
        raise ValueError(f"unknown mount op kind {op.kind!r} (known: {', '.join(_OPS)})")
    handler(rootfd, op)


def _open_dest(rootfd: int, op: MountOp, flags: int = os.O_PATH) -> int | None:
    """``op.dest`` opened in the root; None when it does not exist and the op allows that."""
    try:
        return _open_in_root(rootfd, op.dest, flags)
    except FileNotFoundError:
        if op.allow_missing:
            return None
        raise


def _op_mount(rootfd: int, op: MountOp) -> None:
    fd = _open_dest(rootfd, op, os.O_PATH | os.O_DIRECTORY)
    if fd is None:
        return
    try:
        libc.mount(op.source, _fdpath(fd), op.fstype, op.flags, op.data)
    finally:
        os.close(fd)


def _op_bind(rootfd: int, op: MountOp) -> None:
    fd = _open_dest(rootfd, op)
    if fd is None:
        return
    try:
        _bind_host(str(op.source), fd, libc.MS_BIND | libc.MS_REC)
    finally:
        os.close(fd)
    if op.flags & libc.MS_RDONLY:
        _remount(rootfd, op.dest, libc.MS_RDONLY)


def _bind_host(source: str, dest: int, flags: int) -> None:
    """Bind host path ``source`` onto the box path open as ``dest`` (``MS_BIND`` flags)."""
    src = os.open(source, os.O_PATH | os.O_CLOEXEC)
    try:
        libc.mount(_fdpath(src), _fdpath(dest), None, flags)
    finally:
        os.close(src)


def _op_remount(rootfd: int, op: MountOp) -> None:
    fd = _open_dest(rootfd, op)
    if fd is not None:
        os.close(fd)
        _remount(rootfd, op.dest, op.flags)


def _remount(rootfd: int, dest: str, flags: int) -> None:
    # Reopen: the fd must name the new mount's root, not the dentry under it.
    fd = _open_in_root(rootfd, dest)
    try:
        flags |= libc.MS_REMOUNT | libc.MS_BIND
        try:
            libc.mount(None, _fdpath(fd), None, flags)
        except PermissionError:
            # A mount with locked nosuid/nodev/noexec keeps them.
            flags |= libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
            libc.mount(None, _fdpath(fd), None, flags)
    finally:
        os.close(fd)


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rstrip("/").rpartition("/")
    return parent or "/", name


def _op_mknod(rootfd: int, op: MountOp) -> None:
    parent, name = _split(op.dest)
    dfd = _open_in_root(rootfd, parent, os.O_PATH | os.O_DIRECTORY)
    try:
        os.mknod(name, op.mode, os.makedev(op.major, op.minor), dir_fd=dfd)
        os.chmod(f"{_fdpath(dfd)}/{name}", op.mode & 0o7777)
    finally:
        os.close(dfd)


def _op_device(rootfd: int, op: MountOp) -> None:
    """The host's device node ``op.source`` bound onto a new empty file at ``op.dest``
    (bubblewrap ``SETUP_MOUNT_DEV``: ``create_file`` then a bind mount)."""
    parent, name = _split(op.dest)
    dfd = _open_in_root(rootfd, parent, os.O_PATH | os.O_DIRECTORY)
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o444, dir_fd=dfd))
        node = _open_in_root(rootfd, op.dest)
    finally:
        os.close(dfd)
    try:
        _bind_host(str(op.source), node, libc.MS_BIND)
    finally:
        os.close(node)


def _op_symlink(rootfd: int, op: MountOp) -> None:
    parent, name = _split(op.dest)
    dfd = _open_in_root(rootfd, parent, os.O_PATH | os.O_DIRECTORY)
    try:
        os.symlink(str(op.source), name, dir_fd=dfd)
    finally:
        os.close(dfd)


def _op_mkdir(rootfd: int, op: MountOp) -> None:
    parent, name = _split(op.dest)
    dfd = _open_in_root(rootfd, parent, os.O_PATH | os.O_DIRECTORY)
    try:
        os.mkdir(name, op.mode or 0o755, dir_fd=dfd)
    except FileExistsError:
        pass
    finally:
        os.close(dfd)


def _op_mask(rootfd: int, op: MountOp) -> None:
    """Hide a path: an empty read-only tmpfs over a directory, /dev/null over a file."""
    fd = _open_dest(rootfd, op)
    if fd is None:
        return
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            libc.mount("tmpfs", _fdpath(fd), "tmpfs", libc.MS_RDONLY, "size=0,mode=555")
        else:
            null = _open_in_root(rootfd, "/dev/null")
            try:
                libc.mount(_fdpath(null), _fdpath(fd), None, libc.MS_BIND)
            finally:
                os.close(null)
    finally:
        os.close(fd)


def _op_readonly(rootfd: int, op: MountOp) -> None:
    fd = _open_dest(rootfd, op)
    if fd is None:
        return
    try:
        libc.mount(_fdpath(fd), _fdpath(fd), None, libc.MS_BIND | libc.MS_REC)
    finally:
        os.close(fd)
    _remount(rootfd, op.dest, libc.MS_RDONLY)


_OPS: dict[str, Callable[[int, MountOp], None]] = {
    protocol.MOUNT: _op_mount,
    protocol.BIND: _op_bind,
    protocol.REMOUNT: _op_remount,
    protocol.MKNOD: _op_mknod,
    protocol.DEVICE: _op_device,
    protocol.SYMLINK: _op_symlink,
    protocol.MKDIR: _op_mkdir,
    protocol.MASK: _op_mask,
    protocol.READONLY: _op_readonly,
}


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


class _Init(ChildServer):
    """The serving loop: exec requests in, exit statuses out, orphans reaped."""

    def __init__(self, ctl: socket.socket) -> None:
        super().__init__(ctl)
        self.children: dict[int, socket.socket] = {}

    def exited(self, pid: int, status: int) -> None:
        sock = self.children.pop(pid, None)  # else an orphan: reaped, nothing to tell
        if sock is not None:
            try:
                protocol.send(sock, protocol.Exited(status=status, ended=time.monotonic()))
            except OSError:
                pass
            sock.close()

    def handle(self, msg: protocol.Message | protocol.Frame, fds: list[int]) -> None:
        """``Exec`` and ``Kill``; any other message is a ``ProtocolError`` (its fds are
        closed), which ends the box."""
        if isinstance(msg, Exec):
            self.exec(msg, fds)
        elif isinstance(msg, Kill):
            self.kill(msg)
        else:
            for fd in fds:
                os.close(fd)
            raise protocol.unexpected(msg, "the box's init")

    def kill(self, msg: Kill) -> None:
        if msg.pid in self.children:
            for kill, target in ((os.killpg, msg.pid), (os.kill, msg.pid)):
                try:
                    kill(target, msg.signal)
                except OSError:
                    continue

    def exec(self, msg: Exec, fds: list[int]) -> None:
        stdin, stdout, stderr, status_fd = fds
        status = socket.socket(fileno=status_fd)
        try:
            if msg.user is None:
                pid = self.spawn(msg, stdin, stdout, stderr)
            else:
                pid = os.fork()
                if pid == 0:
                    _child(msg, stdin, stdout, stderr, status)
        except (OSError, users.UserError) as exc:
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            what = (f"cannot fork: {exc.strerror}" if code == errno.EAGAIN
                    and isinstance(exc, OSError) else _describe(exc))
            protocol.send(status, protocol.ExecFailed(error=what, errno=code))
            status.close()
            return
        finally:
            for fd in (stdin, stdout, stderr):
                os.close(fd)
        self.children[pid] = status
        protocol.send(status, protocol.Started(pid=pid))

    def spawn(self, msg: Exec, stdin: int, stdout: int, stderr: int) -> int:
        """The fast path: vfork+exec through posix_spawn, no copy of this process.

        What a command needs set that posix_spawn cannot do (cwd, the OOM score) is set
        on the init around the call; confinement was applied to the init itself and is
        inherited. The init takes the commands' OOM score during the spawn
        (``_oom_setup``), so the command is born with it: set after the spawn, children
        it forked meanwhile would keep the init's. Commands with ``user`` take the fork
        path.
        """
        env = _as_root(msg.env)
        path = _which(msg.argv[0], env.get("PATH", DEFAULT_PATH))
        os.chdir(msg.cwd or "/")
        _oom_score(1)
        try:
            pid = os.posix_spawn(
                path, msg.argv, env, setsid=True, setsigmask=(),
                setsigdef=_DEFAULT_SIGNALS,
                file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
                              (os.POSIX_SPAWN_DUP2, stderr, 2)])
        finally:
            os.chdir("/")
            _oom_score(0)
        return pid


def _oom_setup() -> None:
    """Make the box's processes, not its init, what the OOM killer picks (the init is a
    Python process, larger than most commands; killing it ends the box): scores as
    ``proc.choose_oom_scores`` chooses them.

    The init moves to the command's score around each spawn and back, so a command is born
    with it and so is any child it forks at once (proc(5): a child inherits it).
    """
    global _OOM_SCORES
    _OOM_SCORES = proc.choose_oom_scores()


def _oom_score(which: int) -> None:
    """Set the init's own score to the init's (0) or the commands' (1) choice."""
    if _OOM_SCORES is not None:
        proc.set_oom_score(_OOM_SCORES[which])


_DEFAULT_SIGNALS = (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT,
                    signal.SIGTERM, signal.SIGHUP)


def _which(program: str, path: str) -> str:
    """execvp's search, done here because posix_spawnp would search the init's own PATH."""
    if "/" in program:
        return program
    denied = None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = candidate
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), denied)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _child(msg: Exec, stdin: int, stdout: int, stderr: int,
           status: socket.socket) -> NoReturn:
    try:
        signal.set_wakeup_fd(-1)
        for sig in _DEFAULT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.setsid()
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target, inheritable=True)
        keep = status.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)
        _oom_score(1)
        # As runc's finalizeNamespace: into the directory before the switch, and again
        # after it when only the new user may enter it.
        cwd = msg.cwd or "/"
        try:
            os.chdir(cwd)
            entered = True
        except PermissionError:
            entered = False
        passwd = users.read_file(_PASSWD)
        who = users.exec_user(msg.user or "", passwd, users.read_file(_GROUP))
        env = users.with_home(msg.env, who.uid, passwd)
        _own_stdio(who.uid)
        set_groups(who)
        set_id(os.setuid, who.uid, "uid")
        if not entered:
            os.chdir(cwd)
        if _KEEP is not None:
            caps.limit(_KEEP)
        os.execvpe(msg.argv[0], msg.argv, env)
    except BaseException as exc:
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
        try:
            protocol.send(status, protocol.ExecFailed(error=_describe(exc), errno=code))
        finally:
            os._exit(127)
    os._exit(127)


_PASSWD = "/etc/passwd"
_GROUP = "/etc/group"


_ROOT_KEY: tuple[object, ...] | None = None  # the files _ROOT_HOME and the groups came from
_ROOT_HOME = "/"


def _as_root(env: dict[str, str]) -> dict[str, str]:
    """A command with no user, as runc resolves ``""``: uid 0 with the gid and groups the
    box's passwd and group files give root. The init takes those groups on itself, so the
    posix_spawn fast path passes them on; ``HOME`` comes from passwd unless ``env`` has one.
    The files are read again only when they change (stat: inode, size, times)."""
    global _ROOT_KEY, _ROOT_HOME
    key = (_file_key(_PASSWD), _file_key(_GROUP))
    if key != _ROOT_KEY:
        passwd = users.read_file(_PASSWD)
        who = users.exec_user("", passwd, users.read_file(_GROUP))
        if os.getgid() != who.gid or sorted(os.getgroups()) != sorted(who.groups):
            set_groups(who)
        _ROOT_KEY, _ROOT_HOME = key, users.home_of(who.uid, passwd)
    return env if env.get("HOME") else {**env, "HOME": _ROOT_HOME}


def _file_key(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def set_groups(who: users.ExecUser) -> None:
    """runc's setupUser up to setuid: supplementary groups (skipped where the user namespace
    denies setgroups), then the gid."""
    try:
        with open("/proc/self/setgroups", "rb") as f:
            allowed = f.read().strip() != b"deny"
    except FileNotFoundError:
        allowed = True
    if allowed:
        os.setgroups(list(who.groups))
    set_id(os.setgid, who.gid, "gid")


def set_id(call: Callable[[int], None], value: int, what: str) -> None:
    """``setuid``/``setgid``, with runc's words for an id the user namespace does not map."""
    try:
        call(value)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise OSError(errno.EINVAL,
                      f"cannot set{what} to unmapped {what} {value} in user namespace") from None


def _own_stdio(uid: int) -> None:
    """runc's fixStdioPermissions: the command's stdio belong to its user, so it can reopen
    them (``echo > /dev/stdout``); /dev/null is left alone, and so is what cannot change."""
    for fd in (0, 1, 2):
        st = os.fstat(fd)
        if st.st_uid == uid or (stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)):
            continue
        try:
            os.fchown(fd, uid, -1)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EROFS, errno.EINVAL):
                raise


if __name__ == "__main__":  # pragma: no cover - only ever forked, never run
    sys.exit("pytest_nsbox.runtime.init runs inside a box; it is not a program")
