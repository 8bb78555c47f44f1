"""User namespaces for rootless boxes: who is rootless, the ID maps, and what blocks them.

A process that is not root of the initial user namespace runs its boxes in a user namespace
of its own where it is root (user_namespaces(7)). The namespace's ID maps are chosen here:

- with subordinate ranges (``/etc/subuid`` and ``/etc/subgid`` give the user some, keyed by
  login name or uid, as shadow's ``newuidmap(1)`` reads them) and the setuid helpers
  ``newuidmap``/``newgidmap`` installed (Debian package ``uidmap``): root inside is the
  user, IDs 1..N inside are the user's first subordinate IDs, and ``setgroups`` stays
  allowed. This is the map rootless runc, BuildKit and podman make (runc ``docs/rootless``
  via ``runc spec --rootless``; BuildKit ``docs/rootless.md``: ``newuidmap $pid 0 $(id -u)
  1 1 231072 65536``), written from outside the namespace by the helpers as bubblewrap's
  ``demos/userns-block-fd.py`` does for ``bwrap --userns-block-fd``;
- else one ID each: root inside is the user, and ``setgroups`` is denied first, as the
  kernel requires of an unprivileged writer of ``gid_map`` (user_namespaces(7), "Writing
  "deny" to the /proc/[pid]/setgroups file") and as bubblewrap's ``write_uid_gid_map``
  writes them (``<id> <parent id> 1``, ``setgroups`` ``deny``).

``IdMaps`` also translates a host ID to what a box sees (``inside``): layer tars written
by a rootless process name owners as the box sees them. Host blocks (Debian's
``kernel.unprivileged_userns_clone``, ``user.max_user_namespaces``, Ubuntu's AppArmor
restriction) get fix-it lines of their own (``host_block``, ``diagnose``).

Imports only the stdlib.
"""
from __future__ import annotations

import errno
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

#: The kernel's ``overflowuid``/``overflowgid``: what an unmapped ID reads as.
OVERFLOW_ID = 65534
#: ``/proc/self/uid_map`` of the initial user namespace.
INITIAL_MAP = (0, 0, 4294967295)

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
SYSCTL_CLONE = "/proc/sys/kernel/unprivileged_userns_clone"
SYSCTL_MAX = "/proc/sys/user/max_user_namespaces"
SYSCTL_APPARMOR = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
#: Where to look for more: the command every skip line points to.
DOCTOR = "python -m pytest_nsbox doctor"

FIX_DEBIAN_CLONE = (
    "this kernel forbids user namespaces to normal users (Debian's "
    "kernel.unprivileged_userns_clone=0): allow them with `sudo sysctl -w "
    "kernel.unprivileged_userns_clone=1` (keep it with a line "
    "`kernel.unprivileged_userns_clone=1` in /etc/sysctl.d/99-nsbox.conf), or run pytest as "
    "root")
FIX_MAX_USERNS = (
    "user.max_user_namespaces is 0, so no user namespace can be made: allow some with "
    "`sudo sysctl -w user.max_user_namespaces=28633` (keep it in "
    "/etc/sysctl.d/99-nsbox.conf), or run pytest as root")
FIX_APPARMOR = (
    "AppArmor restricts unprivileged user namespaces "
    "(kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10 and later): give this "
    "Python a profile that allows them, /etc/apparmor.d/nsbox holding `abi <abi/4.0>, "
    "include <tunables/global> profile nsbox {python} flags=(unconfined) {{ userns, }}` "
    "loaded with `sudo apparmor_parser -r /etc/apparmor.d/nsbox`; or lift the restriction "
    "for everyone with `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`; "
    "or run pytest as root")
FIX_NO_HELPER = (
    "newuidmap/newgidmap failed ({detail}); check /etc/subuid and /etc/subgid for the user "
    "{user} and that the helpers are setuid root (Debian package uidmap), or remove the "
    "user's lines there to use a single-ID map")
FIX_GENERIC = (
    "cannot make a user namespace for rootless boxes ({detail}); run `" + DOCTOR + "` to see "
    "what this host lacks, or run pytest as root")


class UsernsError(OSError):
    """The user namespace of rootless boxes could not be made or mapped; ``str()`` is one
    fix-it line."""


# -- who is rootless --------------------------------------------------------------------

def read_id_map(path: str) -> list[tuple[int, int, int]]:
    """The lines of a ``uid_map``/``gid_map`` file as ``(inside, outside, count)``."""
    out = []
    with open(path, encoding="ascii") as f:
        for line in f:
            fields = line.split()
            if len(fields) == 3:
                out.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return out


_rootless: tuple[int, bool] = (0, False)


def rootless() -> bool:
    """Whether boxes must be made rootless: this process is not root of the initial user
    namespace (an effective uid other than 0, or uid 0 of a user namespace, as inside a
    rootless container). containerd and moby decide ``userxattr`` the same way
    (``overlayutils.NeedsUserXAttr``: not needed in "the initial user namespace (aka the
    host)"). Cached per process."""
    global _rootless
    if _rootless[0] != os.getpid():
        if os.geteuid() != 0:
            answer = True
        else:
            try:
                answer = read_id_map("/proc/self/uid_map") != [INITIAL_MAP]
            except (OSError, ValueError):
                answer = False
        _rootless = (os.getpid(), answer)
    return _rootless[1]


def overlay_xattr(name: str) -> str:
    """The name of overlayfs's xattr ``name`` (``opaque``, ...) in the layers this process
    makes: ``trusted.overlay.<name>`` for the mounts of root, ``user.overlay.<name>`` for a
    rootless owner's, whose boxes mount with ``userxattr`` (overlayfs.rst; moby
    ``overlayutils.GetOverlayXattr``: "``user`` when mounted inside a user namespace, and
    ``trusted`` when mounted in the 'root' namespace"). A normal user may not set
    ``trusted.*`` at all."""
    return ("user.overlay." if rootless() else "trusted.overlay.") + name


#: overlayfs may be mounted in a user namespace with ``userxattr`` from this kernel on
#: (overlayfs.rst, "Permission model"; kernel commit 2d2f2d7322ff "ovl: user xattr").
KERNEL_USERXATTR = (5, 11)
#: The rootless fallback where the kernel cannot (fuse-overlayfs(1): "can be used since
#: Linux 4.18 by unprivileged users in an user namespace").
FUSE_OVERLAYFS = "fuse-overlayfs"
FIX_NO_OVERLAY = (
    "this kernel ({release}) cannot mount overlayfs in a user namespace (Linux 5.11 or "
    "later can, with userxattr): install fuse-overlayfs (Debian/Ubuntu: apt-get install "
    "fuse-overlayfs), which rootless boxes then use instead, or run pytest as root")


def kernel_release(release: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of this kernel (``os.uname().release``, e.g. ``6.1.0-18-amd64``)."""
    text = release if release is not None else os.uname().release
    parts = text.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1].split("-")[0] if c.isdigit()))
    except (IndexError, ValueError):
        return (0, 0)


def overlay_helper(release: str | None = None,
                   which: Callable[[str], str | None] = shutil.which) -> str | None:
    """How a rootless box mounts its root: None for the kernel's overlayfs (Linux 5.11+,
    ``userxattr``), else the path of ``fuse-overlayfs``, the fallback podman and BuildKit
    use on older kernels (``storage.conf(5)`` ``mount_program``). ``NSBOX_OVERLAY``
    chooses: ``kernel`` or ``fuse-overlayfs``. Raises ``UsernsError`` (a fix-it line) when
    neither can work."""
    choice = os.environ.get("NSBOX_OVERLAY", "").strip().lower()
    if choice not in ("", "kernel", FUSE_OVERLAYFS):
        raise UsernsError(errno.EINVAL, f"NSBOX_OVERLAY={choice!r}: use kernel or "
                                        f"{FUSE_OVERLAYFS}")
    if choice == "kernel" or (not choice and kernel_release(release) >= KERNEL_USERXATTR):
        return None
    found = which(FUSE_OVERLAYFS)
    if found is None:
        raise UsernsError(errno.ENOENT, FIX_NO_OVERLAY.format(
            release=release or os.uname().release))
    return found


# -- the maps ---------------------------------------------------------------------------

@dataclass(frozen=True)
class IdRange:
    """``count`` IDs from ``inside`` in the namespace are ``outside`` and on in its parent."""

    inside: int
    outside: int
    count: int


@dataclass(frozen=True)
class IdMaps:
    """The uid and gid maps of a rootless user namespace. ``helpers``: written by
    ``newuidmap``/``newgidmap`` (``setgroups`` allowed); else written directly with
    ``setgroups`` denied."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    helpers: bool

    @staticmethod
    def _inside(ranges: tuple[IdRange, ...], host: int) -> int:
        for r in ranges:
            if r.outside <= host < r.outside + r.count:
                return r.inside + host - r.outside
        return OVERFLOW_ID

    def uid_inside(self, host_uid: int) -> int:
        """What a box sees of host uid ``host_uid`` (``OVERFLOW_ID`` where unmapped)."""
        return self._inside(self.uids, host_uid)

    def gid_inside(self, host_gid: int) -> int:
        return self._inside(self.gids, host_gid)

    def subordinate(self) -> bool:
        """More than root is mapped (subordinate ranges)."""
        return sum(r.count for r in self.uids) > 1

    def describe(self) -> str:
        """``uids 0->1001 (1), 1->100000 (65536); gids ...`` for messages and ``doctor``."""
        def one(ranges: tuple[IdRange, ...]) -> str:
            return ", ".join(f"{r.inside}->{r.outside} ({r.count})" for r in ranges)
        how = "newuidmap/newgidmap" if self.helpers else "single ID, setgroups denied"
        return f"uids {one(self.uids)}; gids {one(self.gids)} ({how})"


def subordinate_ranges(path: str, user: str, uid: int) -> list[tuple[int, int]]:
    """The ``(start, count)`` ranges ``path`` (``/etc/subuid`` format, subuid(5): lines of
    ``name_or_id:start:count``) gives the user named ``user`` or numbered ``uid``, in file
    order; malformed lines and empty ranges are skipped, a missing file gives none."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            found.append((start, count))
    return found


def _stack(own: int, ranges: list[tuple[int, int]]) -> tuple[IdRange, ...]:
    """Root is ``own``; the ranges follow from 1, each where the last one ended."""
    out = [IdRange(0, own, 1)]
    inside = 1
    for start, count in ranges:
        if start <= own < start + count:  # a range holding the user's own ID: skip it
            continue
        out.append(IdRange(inside, start, count))
        inside += count
    return tuple(out)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def plan_maps(uid: int | None = None, gid: int | None = None, *, user: str | None = None,
              subuid: str = SUBUID, subgid: str = SUBGID,
              which: Callable[[str], str | None] = shutil.which) -> IdMaps:
    """The maps for a user namespace of user ``uid``/``gid`` (default: this process's
    effective ones; ``user`` its login name, default looked up): subordinate ranges
    through the helpers where both files give the user some and both helpers are
    installed, else a single ID each (module docstring). ``NSBOX_USERNS=single`` asks for
    the single-ID map whatever the files say."""
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    name = user if user is not None else user_name(uid)
    single = IdMaps((IdRange(0, uid, 1),), (IdRange(0, gid, 1),), helpers=False)
    if os.environ.get("NSBOX_USERNS", "").strip().lower() == "single":
        return single
    if not (which("newuidmap") and which("newgidmap")):
        return single
    uranges = subordinate_ranges(subuid, name, uid)
    granges = subordinate_ranges(subgid, name, uid)
    if not uranges or not granges:
        return single
    uids, gids = _stack(uid, uranges), _stack(gid, granges)
    if len(uids) == 1 or len(gids) == 1:
        return single
    return IdMaps(uids, gids, helpers=True)


_maps: tuple[int, IdMaps | None] = (0, None)


def current_maps() -> IdMaps:
    """``plan_maps()`` for this process, computed once per process (the maps its boxes'
    namespace gets, and so how its layer tars name owners)."""
    global _maps
    if _maps[0] != os.getpid() or _maps[1] is None:
        _maps = (os.getpid(), plan_maps())
    assert _maps[1] is not None
    return _maps[1]


def _helper_args(pid: int, ranges: tuple[IdRange, ...]) -> list[str]:
    args = [str(pid)]
    for r in ranges:
        args += [str(r.inside), str(r.outside), str(r.count)]
    return args


def _write_proc(pid: int, name: str, text: str) -> None:
    fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def apply_maps(pid: int, maps: IdMaps) -> None:
    """Write ``maps`` for process ``pid``, which has just made its user namespace and waits.

    Run from the parent user namespace (the owner of the new one). Raises ``UsernsError``
    with a fix-it line when a helper fails or the kernel refuses a map.
    """
    if maps.helpers:
        for tool, ranges in (("newuidmap", maps.uids), ("newgidmap", maps.gids)):
            try:
                done = subprocess.run([tool, *_helper_args(pid, ranges)], capture_output=True,
                                      text=True, timeout=30, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise UsernsError(errno.EPERM, FIX_NO_HELPER.format(
                    detail=f"{tool}: {exc}", user=user_name(os.geteuid()))) from None
            if done.returncode != 0:
                detail = f"{tool} exited {done.returncode}: {done.stderr.strip()[:300]}"
                raise UsernsError(errno.EPERM, FIX_NO_HELPER.format(
                    detail=detail, user=user_name(os.geteuid())))
        return
    try:
        _write_proc(pid, "uid_map", "".join(f"{r.inside} {r.outside} {r.count}\n"
                                            for r in maps.uids))
        try:
            _write_proc(pid, "setgroups", "deny")
        except FileNotFoundError:  # before Linux 3.19 there is no such file
            pass
        _write_proc(pid, "gid_map", "".join(f"{r.inside} {r.outside} {r.count}\n"
                                            for r in maps.gids))
    except OSError as exc:
        raise UsernsError(exc.errno or errno.EPERM,
                          diagnose("writing the user namespace's ID maps", exc)) from None


# -- what blocks user namespaces --------------------------------------------------------

def _sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def host_block() -> str | None:
    """The fix-it line for a sysctl that forbids a normal user any user namespace, read
    without trying one (Debian's ``kernel.unprivileged_userns_clone=0``,
    ``user.max_user_namespaces=0``); None when neither is set so. Ubuntu's AppArmor
    restriction is not among them: a profile may allow this program, which only trying
    tells (``diagnose`` names it when the attempt fails)."""
    if _sysctl(SYSCTL_CLONE) == "0":
        return FIX_DEBIAN_CLONE
    if _sysctl(SYSCTL_MAX) == "0":
        return FIX_MAX_USERNS
    return None


def apparmor_restricts() -> bool:
    """``kernel.apparmor_restrict_unprivileged_userns`` is 1 (Ubuntu 23.10 and later)."""
    return _sysctl(SYSCTL_APPARMOR) == "1"


def diagnose(step: str, exc: OSError) -> str:
    """The fix-it line for ``step`` (e.g. ``unshare(CLONE_NEWUSER)``) failing with ``exc``:
    the host block that explains it where one is set, else the step and its error."""
    block = host_block()
    if block is not None:
        return block
    if exc.errno in (errno.EPERM, errno.EACCES) and apparmor_restricts():
        return FIX_APPARMOR.format(python=os.path.realpath(sys.executable))
    if exc.errno == errno.ENOSPC:
        return FIX_MAX_USERNS.replace("is 0, so no user namespace can be made",
                                      "is reached (ENOSPC)")
    detail = f"{step}: {exc.strerror or exc}"
    return FIX_GENERIC.format(detail=detail)


#: The probe ``probe()`` runs in a fresh Python: a user namespace, its single-ID maps
#: written by itself, and a tmpfs mounted in a mount namespace of its own (what a box
#: needs first); it prints ``ok`` or ``<errno> <step>``.
_PROBE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def fail(step):
    print(ctypes.get_errno(), step); sys.exit(0)
uid, gid = os.geteuid(), os.getegid()
if libc.unshare(0x10000000 | 0x00020000) != 0: fail("unshare(CLONE_NEWUSER)")
def write(name, text):
    try:
        with open("/proc/self/" + name, "w") as f: f.write(text)
    except OSError as exc:
        print(exc.errno, "writing /proc/self/" + name); sys.exit(0)
write("uid_map", "0 %d 1\n" % uid)
if os.path.exists("/proc/self/setgroups"): write("setgroups", "deny")
write("gid_map", "0 %d 1\n" % gid)
if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0: fail("mount(tmpfs)")
print("ok")
"""


def probe(timeout: float = 10.0) -> str | None:
    """Try what a rootless box needs first, in a fresh Python (a forked copy of this
    process could deadlock on its threads' locks): None when it works, else the fix-it line
    (``diagnose``). For ``doctor`` and the tests; a box start finds the same by itself."""
    block = host_block()
    if block is not None:
        return block
    try:
        done = subprocess.run([sys.executable, "-S", "-c", _PROBE], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return FIX_GENERIC.format(detail=f"the probe did not run: {exc}")
    words = done.stdout.split(maxsplit=1)
    if words[:1] == ["ok"]:
        return None
    if len(words) == 2 and words[0].isdigit():
        code = int(words[0])
        return diagnose(words[1].strip(), OSError(code, os.strerror(code)))
    return FIX_GENERIC.format(detail=f"the probe failed: {done.stderr.strip()[-300:]}")
