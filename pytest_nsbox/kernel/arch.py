"""The one table of machine architectures and syscall numbers.

Names: the kernel's (``uname -m``: ``x86_64``, ``aarch64``), OCI's (image-spec
``config.json`` ``architecture``/``variant``: ``amd64``, ``arm64``/``v8``; Go's GOARCH
names) and the audit arch seccomp filters match (``<linux/audit.h>``). Syscall numbers are
those Python 3.11 has no wrapper for (``libc``) and those the seccomp filter refuses or reads
(``seccomp``), for the architectures boxes run on. Imports only the stdlib.
"""
from __future__ import annotations

import os

#: ``<linux/audit.h>``: ``seccomp_data.arch`` of each ABI a filter is built for. These are
#: the architectures with syscall numbers below, in the order of the table's columns.
AUDIT_ARCHES: dict[str, int] = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

#: Other names of the kernel architectures above (OCI/Go, Debian).
KERNEL_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}

#: ``uname -m`` -> OCI architecture and variant (containerd platforms' normalization).
OCI_PLATFORMS: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "x86-64": ("amd64", None),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i686": ("386", None), "i386": ("386", None), "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None), "riscv64": ("riscv64", None)}


def kernel_name(arch: str) -> str:
    """``arch`` as the kernel names it (``amd64`` -> ``x86_64``)."""
    return KERNEL_ALIASES.get(arch, arch)


def host() -> str:
    """The running kernel's architecture (``uname -m``, aliases resolved)."""
    return kernel_name(os.uname().machine)


def oci_platform(machine: str | None = None) -> tuple[str, str | None]:
    """The OCI ``(architecture, variant)`` of ``machine`` (default: this host's)."""
    name = (machine or os.uname().machine).lower()
    return OCI_PLATFORMS.get(name, (name, None))


def oci_arch(arch: str) -> str:
    """An architecture as OCI names it (``x86_64``/``aarch64`` -> ``amd64``/``arm64``)."""
    return OCI_PLATFORMS.get(arch.lower(), (arch.lower(), None))[0]


# Syscall numbers as (x86_64, aarch64); None where that architecture has no such call.
# x86_64: arch/x86/entry/syscalls/syscall_64.tbl; aarch64 uses the generic table,
# include/uapi/asm-generic/unistd.h (scripts/syscall.tbl since Linux 6.11).
SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    # what libc.py calls by number
    "pidfd_open": (434, 434),
    "openat2": (437, 437),
    "capget": (125, 90),
    "capset": (126, 91),
    "seccomp": (317, 277),
    # what the seccomp filter refuses or reads
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "open_tree_attr": (467, 467),
    "unshare": (272, 97),
    "setns": (308, 268),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18),
    "iopl": (172, None),
    "ioperm": (173, None),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    "nfsservctl": (180, 42),
    "uselib": (134, None),
    "vm86": (None, None),  # i386 only: the arch check already refuses it
    "vm86old": (None, None),
    "sysfs": (139, None),
    "_sysctl": (156, None),
    "ustat": (136, None),
    "personality": (135, 92),
    "clone": (56, 220),
    "clone3": (435, 435),
}


def column(arch: str | None = None) -> int:
    """The column of ``arch`` (default: this host's) in ``SYSCALLS``. Raises ValueError for
    an architecture the table has no numbers for."""
    name = host() if arch is None else kernel_name(arch)
    if name not in AUDIT_ARCHES:
        raise ValueError(f"no syscall numbers for architecture {name!r}; "
                         f"known: {', '.join(AUDIT_ARCHES)}")
    return list(AUDIT_ARCHES).index(name)


def number(name: str, arch: str | None = None) -> int | None:
    """Syscall ``name``'s number on ``arch`` (default: this host's); None if it has none.
    Raises KeyError for a name not in the table, ValueError for an unknown architecture."""
    return SYSCALLS[name][column(arch)]
