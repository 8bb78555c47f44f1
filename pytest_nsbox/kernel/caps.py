"""Linux capabilities of a box's commands: Docker's default set, ``cap_add``/``cap_drop``.

``resolve`` turns the spec's names into the numbers to keep; ``apply`` (or its two halves,
``drop_bounding`` and ``limit``) makes the calling process hold exactly those. They run in the
box's init and its forked children, before and after ``pivot_root``: this module imports only
the stdlib and ``libc``, and reads nothing from the filesystem except in ``last_cap``, which
the init calls while the host's ``/proc`` is still in view.
"""
from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable

from . import libc

__all__ = [
    "ALL",
    "CAPABILITIES",
    "DOCKER_DEFAULT",
    "apply",
    "drop_bounding",
    "last_cap",
    "limit",
    "mask",
    "names",
    "resolve",
]

# <linux/capability.h>; spec.CAPABILITIES holds the same table (a unit test keeps them equal),
# but spec.py is not stdlib-only, so the init cannot import it.
CHOWN = 0
DAC_OVERRIDE = 1
DAC_READ_SEARCH = 2
FOWNER = 3
FSETID = 4
KILL = 5
SETGID = 6
SETUID = 7
SETPCAP = 8
LINUX_IMMUTABLE = 9
NET_BIND_SERVICE = 10
NET_BROADCAST = 11
NET_ADMIN = 12
NET_RAW = 13
IPC_LOCK = 14
IPC_OWNER = 15
SYS_MODULE = 16
SYS_RAWIO = 17
SYS_CHROOT = 18
SYS_PTRACE = 19
SYS_PACCT = 20
SYS_ADMIN = 21
SYS_BOOT = 22
SYS_NICE = 23
SYS_RESOURCE = 24
SYS_TIME = 25
SYS_TTY_CONFIG = 26
MKNOD = 27
LEASE = 28
AUDIT_WRITE = 29
AUDIT_CONTROL = 30
SETFCAP = 31
MAC_OVERRIDE = 32
MAC_ADMIN = 33
SYSLOG = 34
WAKE_ALARM = 35
BLOCK_SUSPEND = 36
AUDIT_READ = 37
PERFMON = 38
BPF = 39
CHECKPOINT_RESTORE = 40

#: Every capability this module knows, by name without ``CAP_``.
CAPABILITIES: dict[str, int] = {
    "CHOWN": CHOWN, "DAC_OVERRIDE": DAC_OVERRIDE, "DAC_READ_SEARCH": DAC_READ_SEARCH,
    "FOWNER": FOWNER, "FSETID": FSETID, "KILL": KILL, "SETGID": SETGID, "SETUID": SETUID,
    "SETPCAP": SETPCAP, "LINUX_IMMUTABLE": LINUX_IMMUTABLE,
    "NET_BIND_SERVICE": NET_BIND_SERVICE, "NET_BROADCAST": NET_BROADCAST,
    "NET_ADMIN": NET_ADMIN, "NET_RAW": NET_RAW, "IPC_LOCK": IPC_LOCK, "IPC_OWNER": IPC_OWNER,
    "SYS_MODULE": SYS_MODULE, "SYS_RAWIO": SYS_RAWIO, "SYS_CHROOT": SYS_CHROOT,
    "SYS_PTRACE": SYS_PTRACE, "SYS_PACCT": SYS_PACCT, "SYS_ADMIN": SYS_ADMIN,
    "SYS_BOOT": SYS_BOOT, "SYS_NICE": SYS_NICE, "SYS_RESOURCE": SYS_RESOURCE,
    "SYS_TIME": SYS_TIME, "SYS_TTY_CONFIG": SYS_TTY_CONFIG, "MKNOD": MKNOD, "LEASE": LEASE,
    "AUDIT_WRITE": AUDIT_WRITE, "AUDIT_CONTROL": AUDIT_CONTROL, "SETFCAP": SETFCAP,
    "MAC_OVERRIDE": MAC_OVERRIDE, "MAC_ADMIN": MAC_ADMIN, "SYSLOG": SYSLOG,
    "WAKE_ALARM": WAKE_ALARM, "BLOCK_SUSPEND": BLOCK_SUSPEND, "AUDIT_READ": AUDIT_READ,
    "PERFMON": PERFMON, "BPF": BPF, "CHECKPOINT_RESTORE": CHECKPOINT_RESTORE,
}

#: The set Docker (moby ``oci/caps/defaults.go``) leaves a container.
DOCKER_DEFAULT: tuple[int, ...] = (
    CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP,
    NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE,
)

#: The name ``cap_add``/``cap_drop`` take for every capability at once.
ALL = "ALL"

# <linux/prctl.h>
_PR_CAPBSET_READ = 23

# <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_LINUX_CAPABILITY_U32S_3 = 2

_CAP_LAST_CAP = "/proc/sys/kernel/cap_last_cap"


class _Header(ctypes.Structure):
    """``struct __user_cap_header_struct``."""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    """``struct __user_cap_data_struct``: one 32-bit word of each set."""

    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_DataPair = _Data * _LINUX_CAPABILITY_U32S_3


def resolve(cap_add: Iterable[str], cap_drop: Iterable[str], privileged: bool) -> list[int]:
    """The capabilities a box keeps, with Docker's rules (moby ``TweakCapabilities``).

    ``privileged`` keeps every capability. ``"ALL"`` in ``cap_add`` keeps every capability
    but those in ``cap_drop``; else ``"ALL"`` in ``cap_drop`` keeps only ``cap_add``; else the
    default set, less ``cap_drop``, plus ``cap_add`` (a name in both is kept). Names are
    upper case without ``CAP_``, as the spec normalizes them.
    """
    if privileged:
        return sorted(CAPABILITIES.values())
    adds, drops = list(cap_add), list(cap_drop)
    for name in (*adds, *drops):
        if name != ALL and name not in CAPABILITIES:
            raise ValueError(f"unknown capability {name!r}")
    if ALL in adds:
        keep = {n for name, n in CAPABILITIES.items() if name not in drops}
    elif ALL in drops:
        keep = {CAPABILITIES[name] for name in adds}
    else:
        dropped = {CAPABILITIES[name] for name in drops if name != ALL}
        keep = (set(DOCKER_DEFAULT) - dropped) | {CAPABILITIES[name] for name in adds}
    return sorted(keep)


def names(keep: Iterable[int]) -> list[str]:
    """Capability numbers as names, in number order (for messages and seccomp rules)."""
    by_number = {n: name for name, n in CAPABILITIES.items()}
    return [by_number.get(n, str(n)) for n in sorted(set(keep))]


def mask(keep: Iterable[int]) -> int:
    """The bit mask ``/proc/<pid>/status`` shows (``CapEff`` and friends) for ``keep``."""
    bits = 0
    for n in keep:
        bits |= 1 << n
    return bits


def last_cap() -> int:
    """The highest capability the running kernel knows; read it before ``pivot_root``.

    Without the host's ``/proc`` (a box may have none), the kernel is asked cap by cap:
    ``PR_CAPBSET_READ`` fails with EINVAL past the last one.
    """
    try:
        with open(_CAP_LAST_CAP, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        pass
    cap = 0
    while cap < 63:
        try:
            libc.prctl(_PR_CAPBSET_READ, cap + 1)
        except OSError:
            break
        cap += 1
    return cap


def drop_bounding(keep: Iterable[int], last: int) -> None:
    """Remove every capability not in ``keep`` from the bounding set, and clear ambient.

    Needs ``CAP_SETPCAP`` in the effective set, so it comes before ``setuid`` to a user that
    is not root. No later ``execve`` (of a set-user-ID root program or a program with file
    capabilities) can give the process a capability outside ``keep``.
    """
    kept = set(keep)
    for cap in range(last + 1):
        if cap not in kept:
            try:
                libc.prctl(libc.PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # a number past the kernel's last: not there
                    continue
                what = f"dropping CAP_{names([cap])[0]} from the bounding set"
                raise OSError(exc.errno, f"{what} failed: {os.strerror(exc.errno or 0)}") from None
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)


def limit(keep: Iterable[int]) -> None:
    """Set effective and permitted to ``keep`` (as far as the process holds it), inheritable
    and ambient to nothing.

    After ``setuid`` to a user that is not root the kernel has emptied effective and permitted
    already; this then only clears inheritable. Inheritable stays empty as in Docker since
    CVE-2022-24769: root's ``execve`` recomputes permitted from the bounding set, so root
    keeps ``keep`` without it, and a non-root user gains nothing from file capabilities.
    """
    bits = mask(keep)
    current = _capget()
    permitted = 0
    for i, held in enumerate(current):
        permitted |= held.permitted << (32 * i)
    bits &= permitted
    data = _DataPair()
    for i in range(_LINUX_CAPABILITY_U32S_3):
        word = (bits >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = word
        data[i].permitted = word
        data[i].inheritable = 0
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    try:
        libc.syscall("capset", ctypes.byref(header), ctypes.byref(data))
    except OSError as exc:
        raise OSError(exc.errno, f"capset({names(_bits(bits))}) failed: "
                      f"{os.strerror(exc.errno or 0)}") from None
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)


def apply(keep: Iterable[int], last: int) -> None:
    """Make a root process hold exactly ``keep``: bounding, effective, permitted; and
    across its ``execve``. For a command run as another user, call ``drop_bounding`` before
    ``setgroups``/``setgid``/``setuid`` and ``limit`` after them instead."""
    kept = list(keep)
    drop_bounding(kept, last)
    limit(kept)


def _bits(bits: int) -> list[int]:
    return [n for n in range(64) if bits >> n & 1]


def _capget() -> ctypes.Array[_Data]:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _DataPair()
    libc.syscall("capget", ctypes.byref(header), ctypes.byref(data))
    return data
