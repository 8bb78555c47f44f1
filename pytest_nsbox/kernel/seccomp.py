"""The box's default seccomp filter: a classic BPF program in the spirit of Docker's profile.

Docker's default profile (moby ``profiles/seccomp/default.json``) is an allow list; this one
is the deny list of what that profile refuses and a box has no use for: kernel keyrings,
kexec, modules, bpf and perf, userfaultfd, the mount API, new namespaces (``unshare``,
``setns``, ``clone`` with a ``CLONE_NEW*`` flag, ``clone3`` answered ENOSYS so libcs fall
back to ``clone``, whose flags a filter can read), clocks, reboot, swap, quotas, port I/O,
obsolete calls and exotic ``personality`` values. A refused call fails with EPERM, as in
Docker. Like Docker, a capability the box keeps lets its calls through again: CAP_SYS_ADMIN
the mount API, namespaces and ``clone3``; CAP_SYS_TIME the clocks; CAP_SYS_MODULE modules...

A syscall the filter cannot read (another architecture's table: i386 through ``int 0x80``,
x32 on x86_64, arm32 compat on aarch64) is never let through: the process is killed with
SIGSYS ("Bad system call").

``build`` is pure (bytes in, bytes out); ``install`` loads a program into the calling thread.
Both run in the box's init and its children, before and after ``pivot_root``: this module
imports only the stdlib, ``arch``, ``libc`` and ``caps``.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable

from . import arch as _arch
from . import caps as _caps
from . import libc

__all__ = [
    "ARCHES",
    "CLONE_NAMESPACES",
    "GATES",
    "PERSONALITIES",
    "build",
    "install",
]

#: The architectures a filter can be built for, with the ``seccomp_data.arch`` it checks.
ARCHES = _arch.AUDIT_ARCHES

# arch/x86/include/uapi/asm/unistd.h: x32 syscalls are the x86_64 arch with this bit set.
_X32_SYSCALL_BIT = 0x40000000

# <linux/seccomp.h>
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_DATA_SIZE = 64  # struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6]
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0 = 16  # low 32 bits of args[0]: both architectures are little-endian

# <linux/bpf_common.h>, <linux/filter.h>
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_JGE_K = 0x05 | 0x30 | 0x00
_BPF_JSET_K = 0x05 | 0x40 | 0x00
_BPF_RET_K = 0x06 | 0x00
_BPF_MAXINSNS = 4096
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}

#: ``clone`` flags that make namespaces; refused without CAP_SYS_ADMIN (Docker: 0x7e020000).
CLONE_NAMESPACES = (libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWUSER
                    | libc.CLONE_NEWPID | libc.CLONE_NEWNET | libc.CLONE_NEWCGROUP)

#: ``personality`` values Docker allows: PER_LINUX, UNAME26, PER_LINUX32, both, and the query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_ADMIN = (_caps.SYS_ADMIN,)

#: Each refused syscall and the capabilities any of which lets it through (none: never),
#: after Docker's ``includes: caps`` rules. ``personality`` and ``clone`` are refused only
#: for some arguments, ``clone3`` with ENOSYS; the rest with EPERM.
GATES: dict[str, tuple[int, ...]] = {
    "keyctl": (),
    "add_key": (),
    "request_key": (),
    "kexec_load": (),
    "kexec_file_load": (),
    "open_by_handle_at": (_caps.DAC_READ_SEARCH,),
    "name_to_handle_at": (_caps.DAC_READ_SEARCH,),
    "init_module": (_caps.SYS_MODULE,),
    "finit_module": (_caps.SYS_MODULE,),
    "delete_module": (_caps.SYS_MODULE,),
    "bpf": (_caps.SYS_ADMIN, _caps.BPF),
    "perf_event_open": (_caps.SYS_ADMIN, _caps.PERFMON),
    "userfaultfd": (),
    "mount": _ADMIN,
    "umount2": _ADMIN,
    "pivot_root": _ADMIN,
    "open_tree": _ADMIN,
    "move_mount": _ADMIN,
    "fsopen": _ADMIN,
    "fsconfig": _ADMIN,
    "fsmount": _ADMIN,
    "fspick": _ADMIN,
    "mount_setattr": _ADMIN,
    "open_tree_attr": _ADMIN,
    "unshare": _ADMIN,
    "setns": _ADMIN,
    "reboot": (_caps.SYS_BOOT,),
    "swapon": (),
    "swapoff": (),
    "settimeofday": (_caps.SYS_TIME,),
    "clock_settime": (_caps.SYS_TIME,),
    "clock_adjtime": (_caps.SYS_TIME,),
    "adjtimex": (_caps.SYS_TIME,),
    "acct": (_caps.SYS_PACCT,),
    "quotactl": _ADMIN,
    "quotactl_fd": _ADMIN,
    "lookup_dcookie": _ADMIN,
    "iopl": (_caps.SYS_RAWIO,),
    "ioperm": (_caps.SYS_RAWIO,),
    "create_module": (),
    "get_kernel_syms": (),
    "query_module": (),
    "nfsservctl": (),
    "uselib": (),
    "vm86": (),
    "vm86old": (),
    "sysfs": (),
    "_sysctl": (),
    "ustat": (),
    "personality": (),
    "clone": _ADMIN,
    "clone3": _ADMIN,
}

_ARGUMENT_RULES = ("personality", "clone", "clone3")


def build(arch: str | None = None, allow_admin: bool = False,
          caps: Iterable[int] = ()) -> bytes:
    """The default filter for ``arch`` (``"x86_64"`` or ``"aarch64"``; default: this
    machine's), packed as ``struct sock_filter`` records ready for ``install``.

    ``caps`` are the capabilities the box keeps (``caps.resolve``'s result): their syscalls
    are let through as Docker's profile does. ``allow_admin`` is short for CAP_SYS_ADMIN in
    ``caps``: the mount API, ``unshare``, ``setns``, namespace flags of ``clone``, ``clone3``.
    """
    name = _filter_arch(arch)
    index = _arch.column(name)
    kept = set(caps)
    if allow_admin:
        kept.add(_caps.SYS_ADMIN)

    def gated(syscall: str) -> bool:
        """Whether the box's capabilities let ``syscall`` through whole."""
        return bool(kept.intersection(GATES[syscall]))

    def nr(syscall: str) -> int | None:
        return _arch.SYSCALLS[syscall][index]

    deny: set[int] = set()
    for syscall in GATES:
        n = nr(syscall)
        if n is not None and syscall not in _ARGUMENT_RULES and not gated(syscall):
            deny.add(n)
    asm = _Assembler()
    asm.load(_OFF_ARCH)
    asm.jump(_BPF_JEQ_K, ARCHES[name], jf="kill")
    asm.load(_OFF_NR)
    if name == "x86_64":
        # nr -1 is a syscall a tracer skipped (seccomp runs again after ptrace): ENOSYS anyway.
        asm.jump(_BPF_JEQ_K, 0xFFFFFFFF, jt="allow")
        asm.jump(_BPF_JGE_K, _X32_SYSCALL_BIT, jt="kill")
    for n in sorted(deny):
        asm.jump(_BPF_JEQ_K, n, jt="eperm")
    personality = nr("personality")
    if personality is not None:
        asm.jump(_BPF_JEQ_K, personality, jt="personality")
    if not gated("clone"):
        asm.jump(_BPF_JEQ_K, _need(nr("clone")), jt="clone")
    if not gated("clone3"):
        asm.jump(_BPF_JEQ_K, _need(nr("clone3")), jt="enosys")
    asm.ret(SECCOMP_RET_ALLOW)
    if personality is not None:
        asm.label("personality")
        asm.load(_OFF_ARG0)  # personality(unsigned int): the kernel reads only these 32 bits
        for value in PERSONALITIES:
            asm.jump(_BPF_JEQ_K, value, jt="allow")
        asm.ret(SECCOMP_RET_ERRNO | errno.EPERM)
    if not gated("clone"):
        asm.label("clone")
        asm.load(_OFF_ARG0)  # clone flags: the kernel reads only the low 32 bits (CSIGNAL...)
        asm.jump(_BPF_JSET_K, CLONE_NAMESPACES, jt="eperm")
        asm.ret(SECCOMP_RET_ALLOW)
    asm.label("allow")
    asm.ret(SECCOMP_RET_ALLOW)
    asm.label("eperm")
    asm.ret(SECCOMP_RET_ERRNO | errno.EPERM)
    asm.label("enosys")
    asm.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    asm.label("kill")
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    return asm.assemble()


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes) -> None:
    """Set ``no_new_privs`` and load ``program`` as the calling thread's seccomp filter.

    The filter is inherited by every child and kept across ``execve``; it cannot be removed.
    The caller must be single-threaded (no TSYNC: the box's init and its forks are).
    """
    count, rest = divmod(len(program), _SOCK_FILTER.size)
    if rest or not 0 < count <= _BPF_MAXINSNS:
        raise ValueError(f"not a BPF program: {len(program)} bytes")
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    # Both locals, so alive until the call returns; the kernel copies the program.
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    try:
        libc.syscall("seccomp", ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0),
                     ctypes.byref(prog))
    except OSError as exc:
        raise OSError(exc.errno, f"seccomp(SECCOMP_SET_MODE_FILTER, {count} instructions) "
                      f"failed: {os.strerror(exc.errno or 0)}") from None


def _filter_arch(arch: str | None) -> str:
    name = _arch.host() if arch is None else _arch.kernel_name(arch)
    if name not in ARCHES:
        raise ValueError(f"no seccomp filter for architecture {name!r}; "
                         f"known: {', '.join(ARCHES)}")
    return name


def _need(n: int | None) -> int:
    if n is None:  # pragma: no cover - both tables have clone and clone3
        raise ValueError("syscall missing from this architecture's table")
    return n


class _Assembler:
    """Straight-line classic BPF with forward jumps to named labels."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int, str | None, str | None]] = []
        self.labels: dict[str, int] = {}

    def load(self, offset: int) -> None:
        self.code.append((_BPF_LD_W_ABS, offset, None, None))

    def jump(self, code: int, k: int, jt: str | None = None, jf: str | None = None) -> None:
        """A conditional jump; a missing target means the next instruction."""
        self.code.append((code, k, jt, jf))

    def ret(self, k: int) -> None:
        self.code.append((_BPF_RET_K, k, None, None))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, k, jt, jf) in enumerate(self.code):
            out += _SOCK_FILTER.pack(code, self._offset(pc, jt), self._offset(pc, jf), k)
        return bytes(out)

    def _offset(self, pc: int, label: str | None) -> int:
        if label is None:
            return 0
        offset = self.labels[label] - pc - 1
        if not 0 <= offset <= 0xFF:
            raise ValueError(f"BPF jump to {label!r} out of range ({offset})")
        return offset
