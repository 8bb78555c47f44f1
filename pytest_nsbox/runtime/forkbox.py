"""A box made in place by a fork: how an isolation worker's test child becomes a box.

An isolation worker (``isolate.worker``) runs in an ordinary box over the ``host`` image and
has collected the suite and set up its session fixtures. For each test it forks; the child
becomes a box of its own with the runtime's own pieces, in the order ``init.boot`` uses:

1. it is PID 1 of a new PID namespace (the worker ``unshare``s ``CLONE_NEWPID`` just for this
   fork and then rejoins its own, see ``fork_pid1``);
2. it builds the box (``build``), ahead of its test when it is the worker's spare:
   new mount, UTS, IPC and network namespaces; the mount tree private before the
   first mount; a root that is a copy-on-write layer over the worker's: an overlay whose lower layer is
   the worker's root, and one per writable submount (the project folder's layer, ...), with
   upper layers on a tmpfs of the child's own that goes when the child does; ``/proc``,
   ``/sys``, ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue`` new; Docker's masked and read-only
   paths (``plan.mount_ops``), run by the init's own ``run_op``; ``pivot_root``; loopback up;
3. given its test (``join``), it joins the test's cgroup through ``cgroup.procs``
   descriptors the pytest process opened (the cgroup namespace check is made against the
   opener, Linux >= 5.16), makes a cgroup namespace rooted there and sets the hostname;
4. it forks the test process, which drops to the box's capabilities, sets
   ``no_new_privs`` and installs the default seccomp filter (``confine``), while PID 1 reaps
   (``reap``) until the test process is gone, and then exits: the kernel kills whatever else
   is left in the PID namespace.

The worker's root is an overlay already, so the test's root is the second overlay of the
stack (the kernel allows two, ``FILESYSTEM_MAX_STACK_DEPTH``).
"""
from __future__ import annotations

import errno
import os
import signal
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..kernel import caps, libc, seccomp
from ..kernel.mountinfo import MountEntry
from ..model import users
from .init import loopback_up, run_op, set_groups, set_id
from .plan import (FRESH_FILESYSTEMS, MASKED_PATHS, READONLY_PATHS, fresh_mount,
                   overlay_options)
from .protocol import BIND, MASK, MOUNT, READONLY, REMOUNT, MountOp

#: How each of the worker's mounts reaches the test's root.
COW, FRESH, BIND_RO, BIND_RW, DEV = "cow", "fresh", "bind-ro", "bind", "dev"

@dataclass(frozen=True)
class ChildMount:
    """One mount point of the worker and what the test's root gets there: ``cow`` (an
    overlay over it), ``fresh`` (a new ``fstype`` instance), ``bind-ro`` (the same, read
    only), ``bind`` (the same, writable: a user's bind) or ``dev`` (the worker's ``/dev``
    bound, read-only unless privileged)."""

    point: str
    how: str
    fstype: str


def child_mounts(entries: Iterable[MountEntry], skip: Iterable[str] = (),
                 binds: Iterable[str] = (),
                 is_dir: Callable[[str], bool] = os.path.isdir) -> tuple[ChildMount, ...]:
    """What the test's root is made of, from the worker's mountinfo: the mount visible at
    each point (the last one mounted there), parents first; ``skip`` are points the test
    does not get (the worker's own scratch space); ``binds`` are points the user bound
    (``binds=``), bound into the test's root as they are (a writable one stays writable,
    not copy-on-write), as is a writable file bound on its own (an overlay is mounted on
    a directory only); devices bound one by one under ``/dev`` (a rootless box's) come with
    ``/dev``'s recursive bind. ``/dev/shm`` is a new tmpfs (it is the IPC namespace's
    POSIX shared memory). ``is_dir`` says whether a point is a directory."""
    user_binds = set(binds)
    visible: dict[str, MountEntry] = {}
    for entry in entries:
        visible.pop(entry.point, None)
        visible[entry.point] = entry
    skipped = tuple(skip)
    out = []
    for point, entry in visible.items():
        if any(point == s or point.startswith(s.rstrip("/") + "/") for s in skipped):
            continue
        under_dev = point.startswith("/dev/")
        if point == "/":
            out.append(ChildMount("/", COW, entry.fstype))
        elif point == "/dev/shm":  # unsized, as without isolation (not a box's 64M)
            out.append(ChildMount(point, FRESH, "tmpfs"))
        elif entry.fstype in FRESH_FILESYSTEMS and entry.fstype != "tmpfs":
            out.append(ChildMount(point, FRESH, entry.fstype))
        elif point == "/dev":
            out.append(ChildMount(point, DEV, entry.fstype))
        elif under_dev:
            continue  # a device bound on its own (rootless): in /dev's recursive bind
        elif "ro" in entry.options:
            out.append(ChildMount(point, BIND_RO, entry.fstype))
        elif point in user_binds or not is_dir(point):
            out.append(ChildMount(point, BIND_RW, entry.fstype))  # overlayfs takes no file
        else:
            out.append(ChildMount(point, COW, entry.fstype))
    out.sort(key=lambda m: (m.point != "/", m.point.count("/"), m.point))
    return tuple(out)


@dataclass(frozen=True)
class ForkPlan:
    """How a test box is built (before it knows its test: ``join`` gives it its hostname
    and cgroup): whether it gets its own network namespace, the worker's mounts it is made
    of, its ``scratch`` directory (where the child's tmpfs of upper layers goes, outside
    the new root), ``privileged`` (``/dev`` and ``/sys`` writable, no masked paths)."""

    network: bool
    mounts: tuple[ChildMount, ...]
    scratch: str
    privileged: bool = False


def prepare() -> None:
    """Work every test box would repeat, done once in the worker before it forks."""
    _last_cap()


def fork_pid1(own_pidns: int) -> int:
    """``fork()`` into a new PID namespace: the child is its PID 1. The caller keeps its
    own namespace for its later children (``own_pidns``: an fd of ``/proc/self/ns/pid``)."""
    libc.unshare(libc.CLONE_NEWPID)
    try:
        return os.fork()
    finally:
        if os.getpid() != 1:  # the parent: back to its own namespace for its children
            libc.setns(own_pidns, libc.CLONE_NEWPID)


def build(plan: ForkPlan) -> None:
    """The namespaces and the root of a box, in the child (PID 1 of its namespace), before
    it knows its test: a spare box made while the test before it runs (``join`` finishes
    it). The mount tree is private before the first mount; the working directory is kept.
    Raises ``OSError`` for a step the kernel refuses."""
    cwd = os.getcwd()
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
    if plan.network:
        flags |= libc.CLONE_NEWNET
    libc.unshare(flags)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    scratch = plan.scratch
    libc.mount("nsbox", scratch, "tmpfs", libc.MS_NOSUID, "mode=700")
    root = os.path.join(scratch, "root")
    os.mkdir(root, 0o755)
    ops: list[MountOp] = []
    for n, mount in enumerate(plan.mounts):
        if mount.how == COW:
            upper, work = os.path.join(scratch, f"u{n}"), os.path.join(scratch, f"w{n}")
            os.mkdir(upper, 0o755)
            os.mkdir(work, 0o755)
            data = overlay_options([mount.point], upper, work)
            if mount.point == "/":
                try:
                    libc.mount("nsbox", root, "overlay", 0, data)
                except OSError as exc:
                    raise _cow_error(exc, "/") from None
                continue
            ops.append(MountOp(MOUNT, mount.point, source="nsbox", fstype="overlay", data=data))
        elif mount.how == FRESH:
            ops.append(fresh_mount(mount.point, mount.fstype, plan.privileged))
        elif mount.how in (DEV, BIND_RW):
            ops.append(MountOp(BIND, mount.point, source=mount.point))
        else:
            ops.append(MountOp(BIND, mount.point, source=mount.point, flags=libc.MS_RDONLY))
    if not plan.privileged:
        ops.append(MountOp(REMOUNT, "/dev", flags=libc.MS_RDONLY | libc.MS_NOSUID,
                           allow_missing=True))
        ops += [MountOp(MASK, p, allow_missing=True) for p in MASKED_PATHS]
        ops += [MountOp(READONLY, p, allow_missing=True) for p in READONLY_PATHS]
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for op in ops:
            try:
                run_op(rootfd, op)
            except OSError as exc:
                raise (_cow_error(exc, op.dest) if op.fstype == "overlay" else exc) from None
    finally:
        os.close(rootfd)
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir(cwd)
    if plan.network:
        loopback_up()


def _cow_error(exc: OSError, point: str) -> OSError:
    """The error of a copy-on-write layer the kernel refused, with the likely cause of an
    EINVAL: overlayfs stacks at most two deep (``FILESYSTEM_MAX_STACK_DEPTH``), the
    worker's own layer is one, so a host whose ``point`` is overlayfs already (a Docker
    container's root, an overlay mounted there) leaves no room for the test's."""
    if exc.errno != errno.EINVAL:
        return exc
    return OSError(errno.EINVAL, (
        f"{exc.strerror or exc}; the test's copy-on-write layer over {point} was refused: "
        f"the worker's layer there is one overlayfs, and where the host's folder is "
        f"overlayfs too (inside a Docker container, or an overlay mounted there) the test's "
        f"would be the third of the stack, one more than the kernel allows "
        f"(FILESYSTEM_MAX_STACK_DEPTH is 2); run --nsbox-isolate where that folder is a "
        f"plain file system, or give the tests boxes of their own (the nsbox fixture)"))


def join(hostname: str, cgroup_procs: Iterable[int]) -> None:
    """Finish a built box for its test: into the test's cgroup (the memory the box uses
    from now on is charged there), a cgroup namespace rooted at it, the test's hostname."""
    for fd in cgroup_procs:
        os.write(fd, b"0")
        os.close(fd)
    libc.unshare(libc.CLONE_NEWCGROUP)
    libc.sethostname(hostname)


_PROGRAMS: dict[tuple[int, ...], bytes] = {}
_LAST_CAP: list[int] = []


def _last_cap() -> int:
    """The kernel's last capability number, read once (in the worker, before its forks)."""
    if not _LAST_CAP:
        _LAST_CAP.append(caps.last_cap())
    return _LAST_CAP[0]


def seccomp_program(keep: Iterable[int]) -> bytes:
    """The default seccomp filter for a box keeping ``keep``, built once per set (in the
    worker, before it forks: every test child inherits it built)."""
    key = tuple(sorted(keep))
    program = _PROGRAMS.get(key)
    if program is None:
        program = _PROGRAMS[key] = seccomp.build(caps=key)
    return program


def confine(keep: Iterable[int] | None, *, use_seccomp: bool, no_new_privs: bool,
            user: str | None = None) -> None:
    """Hold the test process to the box's rules: exactly the capabilities ``keep`` (None:
    all, privileged), as ``user`` (resolved in the box's ``/etc/passwd`` and
    ``/etc/group`` by runc's rules, ``model.users.exec_user``; None: root), then
    ``no_new_privs``, then the seccomp filter (last: it also guards the calls before it).
    The order is runc's ``finalizeNamespace``: bounding set, then groups and ids, then the
    capability sets. Raises ``UserError`` for a user the box does not know."""
    kept = None if keep is None else list(keep)
    if kept is not None:
        caps.drop_bounding(kept, _last_cap())
    if user:
        passwd = users.read_file("/etc/passwd")
        who = users.exec_user(user, passwd, users.read_file("/etc/group"))
        set_groups(who)
        set_id(os.setuid, who.uid, "uid")
    if kept is not None:
        caps.limit(kept)
    if no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    if use_seccomp:
        seccomp.install(seccomp_program(kept or ()))


def reap(child: int) -> int:
    """PID 1's duty: wait for every process that ends up ours until ``child`` is gone;
    returns its wait status. Signals the namespace's init is sent from inside are ignored
    by the kernel unless handled: SIGTERM/SIGINT are passed on to ``child``."""
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == child:
            return status


def encode_status(status: int) -> bytes:
    """A wait status as sent from PID 1 to the worker (4 bytes)."""
    return struct.pack("=i", status)


def decode_status(data: bytes) -> int | None:
    return struct.unpack("=i", data)[0] if len(data) == 4 else None
