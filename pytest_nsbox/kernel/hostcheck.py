"""What this host offers boxes: the probes behind ``python -m pytest_nsbox doctor``.

Each check returns a ``Finding``: whether the piece works, what was found, and for a
missing piece what to change. Probes that need a namespace run in a forked child (the
caller's namespaces never change): it enters what it needs, tries the one operation that
decides, and reports the step that failed and its errno through a pipe.

- user namespaces: ``kernel.userns.probe`` (a namespace, our uid mapped to root in it, a
  tmpfs mounted in a mount namespace of its own: what Ubuntu's AppArmor restriction
  withholds though the unshare succeeds), the known blocks (``user.max_user_namespaces``,
  Debian's ``kernel.unprivileged_userns_clone``, Ubuntu 23.10+'s
  ``kernel.apparmor_restrict_unprivileged_userns``) with the fix-it lines of
  ``kernel.userns``;
- overlayfs: listed in ``/proc/filesystems`` (or its module loaded), and mounted with
  ``userxattr`` in a user namespace (Documentation/filesystems/overlayfs.rst, "Permission
  model": kernel 5.11+; the upper directory's filesystem must hold ``user.*`` xattrs);
- ``sch_netem``: an ``RTM_NEWQDISC`` of kind ``netem`` on ``lo`` of a fresh network
  namespace, sent over rtnetlink by hand (rtnetlink(7); ``struct tc_netem_qopt`` of
  linux/pkt_sched.h, as iproute2's tc/q_netem.c sends it): ENOENT means the kernel has
  no such qdisc.

Imports only the stdlib, ``kernel.libc`` and ``kernel.userns``; each finding takes its
probe as an argument, so tests can give it another answer.
"""
from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import libc, userns

@dataclass(frozen=True)
class Finding:
    """One line of ``doctor``: a piece of the host boxes use."""

    name: str
    ok: bool
    detail: str
    """What was found, one line."""
    fix: str | None = None
    """What to change, for a piece that is missing (None when ``ok``)."""
    required: bool = True
    """False for a piece only some features need (netem: latency, jitter and loss)."""


@dataclass(frozen=True)
class Probe:
    """What a probe child found: ``ok``, else the step that failed and its errno."""

    ok: bool
    step: str = ""
    errno: int = 0

    def why(self) -> str:
        return f"{self.step}: {os.strerror(self.errno)}" if not self.ok else "works"


Step = Callable[[str], None]


def run_probe(fn: Callable[[Step], None], timeout: float = 20.0) -> Probe:
    """Run ``fn(step)`` in a forked child; ``step(name)`` names what it tries next, so an
    ``OSError`` is reported as that step's failure. The child only makes syscalls and
    writes ``/proc`` files, so forking a threaded process is safe enough for it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        current = ["start"]

        def step(name: str) -> None:
            current[0] = name

        try:
            os.close(r)
            fn(step)
            os.write(w, b"ok")
        except OSError as exc:
            os.write(w, f"{exc.errno or errno.EIO} {current[0]}".encode())
        except BaseException:  # noqa: BLE001 - report anything, never unwind into the caller
            os.write(w, f"{errno.EIO} {current[0]}".encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = _read_until_eof(r, timeout)
    finally:
        os.close(r)
        _reap(pid, timeout)
    text = data.decode("utf-8", "replace")
    if text == "ok":
        return Probe(True)
    code, _, failed = text.partition(" ")
    return Probe(False, failed or "probe", int(code) if code.isdigit() else errno.EIO)


def _read_until_eof(fd: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b"%d timeout" % errno.ETIMEDOUT
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


# -- user namespaces ---------------------------------------------------------------------------

def enter_userns(step: Step) -> None:
    """In a probe child: a new user namespace where we are root, mapped to our own uid and
    gid (user_namespaces(7): ``setgroups`` is denied before ``gid_map`` is written)."""
    uid, gid = os.geteuid(), os.getegid()
    step("unshare(CLONE_NEWUSER)")
    libc.unshare(libc.CLONE_NEWUSER)
    step("writing /proc/self/uid_map")
    try:
        _write("/proc/self/setgroups", "deny")
    except FileNotFoundError:
        pass  # kernels before 3.19
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")


def _private_mounts(step: Step) -> None:
    step("unshare(CLONE_NEWNS)")
    libc.unshare(libc.CLONE_NEWNS)
    step("making the mount namespace private")
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def normal_users_blocked() -> str | None:
    """The known sysctl that keeps normal users from user namespaces here (its fix-it
    line, ``userns.host_block``; Ubuntu's AppArmor restriction), or None."""
    block = userns.host_block()
    if block is None and userns.apparmor_restricts():
        block = userns.FIX_APPARMOR.format(python=os.path.realpath(sys.executable))
    return block


def userns_finding(*, probe: Callable[[], str | None] | None = None,
                   rootless: bool | None = None) -> Finding:
    """User namespaces: what rootless boxes stand on (``probe``, default ``userns.probe``:
    a namespace, our uid mapped to root in it, a tmpfs mounted there; None or the fix-it
    line). As root they are not needed; the finding then says what normal users would
    meet."""
    problem = (probe or userns.probe)()
    if not (userns.rootless() if rootless is None else rootless):
        here = "they work here" if problem is None else f"they fail here too: {problem}"
        blocked = normal_users_blocked()
        users = (f"normal users are blocked: {blocked.split(':')[0]}" if blocked
                 else "normal users may use them (rootless boxes)")
        return Finding("user namespaces", True, f"not needed as root ({here}); {users}",
                       required=False)
    if problem is None:
        return Finding("user namespaces", True,
                       "work: this user is root in a user namespace of its own")
    return Finding("user namespaces", False, "do not work for this user", problem)


# -- overlayfs ---------------------------------------------------------------------------------

def overlay_in_kernel(proc: str = "/proc", sysfs: str = "/sys") -> bool:
    """overlayfs is registered (``/proc/filesystems``) or its module is loaded
    (``/sys/module/overlay``); ``proc``/``sysfs`` where those are mounted."""
    try:
        with open(os.path.join(proc, "filesystems"), encoding="utf-8") as f:
            if any(line.split() and line.split()[-1] == "overlay" for line in f):
                return True
    except OSError:
        pass
    return os.path.isdir(os.path.join(sysfs, "module", "overlay"))


def probe_overlay_userxattr(where: str) -> Probe:
    """Mount overlayfs with ``userxattr`` in a user namespace, its layers in a scratch
    directory under ``where`` (the filesystem boxes' upper layers would be on)."""
    scratch = tempfile.mkdtemp(prefix=".nsbox-probe-", dir=where)
    try:
        dirs = {n: os.path.join(scratch, n) for n in ("lower", "upper", "work", "merged")}
        for d in dirs.values():
            os.mkdir(d)

        def fn(step: Step) -> None:
            enter_userns(step)
            _private_mounts(step)
            step(f"mounting overlayfs with userxattr (upper layer on {where})")
            libc.mount("nsbox-probe", dirs["merged"], "overlay", 0,
                       f"lowerdir={dirs['lower']},upperdir={dirs['upper']},"
                       f"workdir={dirs['work']},userxattr")

        return run_probe(fn)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def overlay_finding(where: str, *, proc: str = "/proc", sysfs: str = "/sys",
                    rootless: bool | None = None,
                    probe: Callable[[str], Probe] | None = None) -> Finding:
    """overlayfs, and whether it mounts unprivileged (``userxattr``) with its upper layer
    on the filesystem of ``where``: required for rootless boxes, informative as root."""
    root = not (userns.rootless() if rootless is None else rootless)
    if not overlay_in_kernel(proc, sysfs):
        return Finding("overlayfs", False, "not in this kernel",
                       "load it with `sudo modprobe overlay` (CONFIG_OVERLAY_FS)")
    try:
        result = (probe or probe_overlay_userxattr)(where)
    except OSError as exc:
        result = Probe(False, f"making a scratch directory in {where}", exc.errno or errno.EIO)
    xattr = "works" if result.ok else f"does not work ({result.why()})"
    detail = (f"in the kernel; mounted with userxattr in a user namespace, upper layer on "
              f"{where}: {xattr}")
    if result.ok or root:
        return Finding("overlayfs", True, detail)
    fix = ("overlayfs mounts unprivileged from Linux 5.11 with userxattr, and its upper "
           "layer needs user.* xattrs (tmpfs has them from Linux 6.6): use a newer kernel, "
           "or put the run directory on ext4/xfs/btrfs (NSBOX_RUN), or run as root")
    return Finding("overlayfs", False, detail, fix)


# -- sch_netem ---------------------------------------------------------------------------------

RTM_NEWQDISC = 36
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
TCA_KIND, TCA_OPTIONS = 1, 2
TC_H_ROOT = 0xFFFFFFFF


def _rtattr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


#: ``struct tc_netem_qopt`` (linux/pkt_sched.h): latency (scheduler ticks), limit
#: (packets), loss, gap, duplicate, jitter.
NETEM_OPTIONS = struct.pack("=6I", 1000, 1000, 0, 0, 0, 0)


def qdisc_request(ifindex: int, kind: str = "netem", options: bytes | None = NETEM_OPTIONS,
                  seq: int = 1) -> bytes:
    """``tc qdisc add dev <ifindex> root handle 1: <kind>`` as an rtnetlink message:
    ``struct tcmsg`` then the ``TCA_KIND`` and (if given) ``TCA_OPTIONS`` attributes."""
    tcmsg = struct.pack("=BBHiIII", socket.AF_UNSPEC, 0, 0, ifindex, 0x10000, TC_H_ROOT, 0)
    body = tcmsg + _rtattr(TCA_KIND, kind.encode() + b"\0")
    if options is not None:
        body += _rtattr(TCA_OPTIONS, options)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWQDISC, flags, seq, 0) + body


def netlink_ack(data: bytes, seq: int = 1) -> int | None:
    """The errno of the ``NLMSG_ERROR`` acknowledging ``seq`` in ``data`` (0: done), or
    None where ``data`` holds no such message."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, got, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return None
        if kind == NLMSG_ERROR and got == seq and offset + 20 <= len(data):
            error: int = struct.unpack_from("=i", data, offset + 16)[0]
            return -error
        offset += (length + 3) & ~3
    return None


def add_qdisc(ifindex: int, kind: str = "netem", options: bytes | None = NETEM_OPTIONS) -> None:
    """Add a root qdisc of ``kind`` to interface ``ifindex`` of this network namespace;
    OSError with the kernel's errno (ENOENT: no such qdisc in this kernel)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(10)
        sock.bind((0, 0))
        sock.send(qdisc_request(ifindex, kind, options))
        while True:
            code = netlink_ack(sock.recv(65536))
            if code is None:
                continue
            if code:
                raise OSError(code, os.strerror(code))
            return


def probe_qdisc(kind: str = "netem", options: bytes | None = NETEM_OPTIONS) -> Probe:
    """Add a ``kind`` qdisc to ``lo`` of a fresh network namespace (inside a user namespace
    for a normal user); netem is what latency, jitter and loss shaping adds."""
    def fn(step: Step) -> None:
        if os.geteuid() != 0:
            enter_userns(step)
        step("unshare(CLONE_NEWNET)")
        libc.unshare(libc.CLONE_NEWNET)
        step(f"adding a {kind} qdisc")
        add_qdisc(socket.if_nametoindex("lo"), kind, options)

    return run_probe(fn)


def probe_netem() -> Probe:
    return probe_qdisc("netem", NETEM_OPTIONS)


def netem_finding(probe: Callable[[], Probe] | None = None) -> Finding:
    """sch_netem (``probe``, default ``probe_netem``): optional, only latency, jitter and
    loss need it."""
    result = (probe or probe_netem)()
    keys = "latency, jitter and loss"
    if result.ok:
        return Finding("netem", True, f"sch_netem works: {keys} can be shaped", required=False)
    if result.errno == errno.ENOENT:
        return Finding("netem", False, f"this kernel has no sch_netem qdisc: {keys} cannot "
                       "be shaped (rate can)",
                       "load it with `sudo modprobe sch_netem` (CONFIG_NET_SCH_NETEM; on "
                       "Ubuntu it is in linux-modules-extra-$(uname -r)), or leave "
                       f"{keys} unset", required=False)
    return Finding("netem", False, f"could not be tried: {result.why()}",
                   "run doctor as root, or where network namespaces can be made",
                   required=False)
