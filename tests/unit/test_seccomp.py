"""seccomp: the default filter, run on an interpreter here and on the kernel in a child.

The interpreter below executes the packed program the way the kernel does (classic BPF on a
``struct seccomp_data``) and refuses anything the kernel's checker would refuse, so every
rule is checked on both architectures without an aarch64 machine. The real tests install
the filter in a child Python and try the calls; a run without the filter is the control
that shows each refusal comes from the filter and not from somewhere else.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Iterable

import pytest

from pytest_nsbox.kernel import arch as arch_table
from pytest_nsbox.kernel import caps, seccomp

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts)")

ARCHES = ["x86_64", "aarch64"]
AUDIT = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_ARM = 0x40000028

ALLOW = 0x7FFF0000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS
KILL = 0x80000000

# What the issue and Docker's profile refuse; the numbers come from the module and are
# checked against the kernel headers below.
REFUSED = [
    "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load", "open_by_handle_at",
    "name_to_handle_at", "init_module", "finit_module", "delete_module", "bpf",
    "perf_event_open", "userfaultfd", "mount", "umount2", "pivot_root", "fsopen", "fsmount",
    "fsconfig", "fspick", "move_mount", "open_tree", "mount_setattr", "unshare", "setns",
    "reboot", "swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "acct", "quotactl", "lookup_dcookie", "iopl", "ioperm", "create_module",
    "get_kernel_syms", "query_module", "nfsservctl", "uselib", "vm86", "vm86old", "sysfs",
    "_sysctl", "ustat",
    # the same families, newer calls
    "open_tree_attr", "quotactl_fd",
]
# What CAP_SYS_ADMIN (allow_admin=True) lets through, as Docker's profile does.
ADMIN = [
    "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
    "open_tree", "open_tree_attr", "mount_setattr", "unshare", "setns", "quotactl",
    "quotactl_fd", "lookup_dcookie", "bpf", "perf_event_open",
]
# Calls every program makes: (x86_64, aarch64) from the kernel's tables.
COMMON = {
    "read": (0, 63), "write": (1, 64), "openat": (257, 56), "execve": (59, 221),
    "getpid": (39, 172), "exit_group": (231, 94), "socket": (41, 198),
    "close_range": (436, 436), "chroot": (161, 51), "ptrace": (101, 117),
}

NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
SIGCHLD = 17
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_VFORK, CLONE_THREAD, CLONE_SETTLS = 0x4000, 0x10000, 0x80000
PTHREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SETTLS


# -- a classic BPF interpreter, with the kernel's checks (seccomp_check_filter) ---------------

BPF_LD_W_ABS, BPF_RET_K, BPF_JA = 0x20, 0x06, 0x05
BPF_JEQ_K, BPF_JGT_K, BPF_JGE_K, BPF_JSET_K = 0x15, 0x25, 0x35, 0x45
SOCK_FILTER = struct.Struct("=HBBI")
SECCOMP_DATA = struct.Struct("=iIQ6Q")


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    assert len(program) % SOCK_FILTER.size == 0
    insns = [SOCK_FILTER.unpack_from(program, i) for i in range(0, len(program), 8)]
    assert 0 < len(insns) <= 4096, "BPF_MAXINSNS"
    for pc, (code, jt, jf, k) in enumerate(insns):
        if code == BPF_LD_W_ABS:
            assert k % 4 == 0 and k < SECCOMP_DATA.size, f"{pc}: load outside seccomp_data"
        elif code in (BPF_JEQ_K, BPF_JGT_K, BPF_JGE_K, BPF_JSET_K):
            assert pc + 1 + max(jt, jf) < len(insns), f"{pc}: jump past the end"
        elif code == BPF_JA:
            assert pc + 1 + k < len(insns), f"{pc}: jump past the end"
        elif code != BPF_RET_K:
            raise AssertionError(f"{pc}: opcode {code:#x} not in this interpreter")
    assert insns[-1][0] == BPF_RET_K, "a program ends with a return"
    return insns


def run(program: bytes, nr: int, arch: int, args: tuple[int, ...] = (), ip: int = 0) -> int:
    """The action the kernel takes for one syscall (``struct seccomp_data`` built here)."""
    full = (tuple(args) + (0,) * 6)[:6]
    data = SECCOMP_DATA.pack(nr, arch, ip, *full)
    insns = decode(program)
    acc, pc = 0, 0
    for _ in range(len(insns)):  # forward jumps only: no more steps than instructions
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == BPF_LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == BPF_RET_K:
            return k
        elif code == BPF_JA:
            pc += k
        else:
            taken = {BPF_JEQ_K: acc == k, BPF_JGT_K: acc > k, BPF_JGE_K: acc >= k,
                     BPF_JSET_K: bool(acc & k)}[code]
            pc += jt if taken else jf
    raise AssertionError("ran off the program")


def action(arch: str, name_or_nr: str | int, *args: int, allow_admin: bool = False,
           keep: Iterable[int] = ()) -> int:
    program = seccomp.build(arch, allow_admin=allow_admin, caps=keep)
    nr = name_or_nr if isinstance(name_or_nr, int) else arch_table.number(name_or_nr, arch)
    assert nr is not None, f"{name_or_nr} has no number on {arch}"
    return run(program, nr, AUDIT[arch], args)


def present(arch: str) -> list[str]:
    return [n for n in REFUSED if arch_table.number(n, arch) is not None]


# -- the numbers ------------------------------------------------------------------------------

HEADERS = {
    "x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "aarch64": "/usr/include/asm-generic/unistd.h",  # arm64's asm/unistd.h includes it
}


@pytest.mark.parametrize("arch", ARCHES)
def test_numbers_match_the_kernel_headers(arch: str) -> None:
    try:
        with open(HEADERS[arch], encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        pytest.skip(f"no {HEADERS[arch]} (apt-get install linux-libc-dev)")
    table = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", text)}
    checked = 0
    for name in arch_table.SYSCALLS:  # the one table: seccomp's calls and libc's
        if name in table:  # headers older than the call (open_tree_attr: Linux 6.15)
            assert arch_table.number(name, arch) == table[name], name
            checked += 1
        elif name not in ("open_tree_attr",):
            assert arch_table.number(name, arch) is None, f"{name} is not in {HEADERS[arch]}"
    assert checked > 30
    for name, numbers in COMMON.items():
        assert table[name] == numbers[ARCHES.index(arch)], name


def test_every_refused_call_has_a_rule() -> None:
    assert set(seccomp.GATES) == {*REFUSED, "personality", "clone", "clone3"}
    assert seccomp.CLONE_NAMESPACES == sum(NS_FLAGS.values()) == 0x7E020000  # Docker's mask


def test_arch_names() -> None:
    assert seccomp.build("amd64") == seccomp.build("x86_64")
    assert seccomp.build("arm64") == seccomp.build("aarch64")
    assert seccomp.build() == seccomp.build(arch_table.host())
    with pytest.raises(ValueError, match="no seccomp filter for architecture 'riscv64'"):
        seccomp.build("riscv64")


# -- the program, interpreted -----------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHES)
def test_refused_calls_get_eperm(arch: str) -> None:
    got = {name: action(arch, name) for name in present(arch)}
    assert got == {name: EPERM for name in present(arch)}
    if arch == "aarch64":  # x86-only calls have no number there: nothing to refuse
        assert "iopl" not in got and "sysfs" not in got and "mount" in got


@pytest.mark.parametrize("arch", ARCHES)
def test_everything_else_is_allowed(arch: str) -> None:
    program = seccomp.build(arch)
    refused = {arch_table.number(n, arch) for n in [*REFUSED, "personality", "clone", "clone3"]}
    allowed = [nr for nr in range(600) if nr not in refused]
    assert {nr: run(program, nr, AUDIT[arch]) for nr in allowed} == {nr: ALLOW for nr in allowed}
    for name, numbers in COMMON.items():
        assert run(program, numbers[ARCHES.index(arch)], AUDIT[arch], (1, 2, 3)) == ALLOW, name


@pytest.mark.parametrize("arch", ARCHES)
def test_admin_lets_the_mount_api_and_namespaces_through(arch: str) -> None:
    for name in present(arch):
        want = ALLOW if name in ADMIN else EPERM
        assert action(arch, name, allow_admin=True) == want, name
        assert action(arch, name, keep=[caps.SYS_ADMIN]) == want, name
    assert action(arch, "clone3", allow_admin=True) == ALLOW
    for flag in NS_FLAGS.values():
        assert action(arch, "clone", flag | SIGCHLD, allow_admin=True) == ALLOW
    assert action(arch, "personality", 0x0040000, allow_admin=True) == EPERM


@pytest.mark.parametrize(("cap", "calls"), [
    (caps.SYS_TIME, ["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"]),
    (caps.SYS_MODULE, ["init_module", "finit_module", "delete_module"]),
    (caps.SYS_BOOT, ["reboot"]),
    (caps.SYS_PACCT, ["acct"]),
    (caps.SYS_RAWIO, ["iopl", "ioperm"]),
    (caps.DAC_READ_SEARCH, ["open_by_handle_at", "name_to_handle_at"]),
    (caps.BPF, ["bpf"]),
    (caps.PERFMON, ["perf_event_open"]),
])
@pytest.mark.parametrize("arch", ARCHES)
def test_a_kept_capability_lets_its_calls_through(arch: str, cap: int, calls: list[str]) -> None:
    for name in present(arch):
        want = ALLOW if name in calls else EPERM
        assert action(arch, name, keep=[cap]) == want, (caps.names([cap]), name)


@pytest.mark.parametrize("arch", ARCHES)
def test_never_allowed_even_with_every_capability(arch: str) -> None:
    never = ["keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
             "userfaultfd", "swapon", "swapoff", "create_module", "get_kernel_syms",
             "query_module", "nfsservctl", "uselib", "sysfs", "_sysctl", "ustat"]
    every = caps.resolve([], [], True)
    for name in never:
        if arch_table.number(name, arch) is not None:
            assert action(arch, name, keep=every) == EPERM, name
    assert action(arch, "mount", keep=every) == ALLOW


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("flag", list(NS_FLAGS))
def test_clone_with_a_namespace_flag_is_refused(arch: str, flag: str) -> None:
    assert action(arch, "clone", NS_FLAGS[flag] | SIGCHLD) == EPERM
    assert action(arch, "clone", NS_FLAGS[flag] | PTHREAD_FLAGS) == EPERM


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("flags", [
    SIGCHLD,  # fork()
    CLONE_VM | CLONE_VFORK | SIGCHLD,  # vfork(), posix_spawn()
    PTHREAD_FLAGS | 0x00100000 | 0x00200000 | 0x01000000,  # pthread_create()
    0,
    (1 << 40) | SIGCHLD,  # the kernel reads only the low 32 bits of clone's flags
])
def test_clone_without_namespace_flags_is_allowed(arch: str, flags: int) -> None:
    assert action(arch, "clone", flags) == ALLOW


@pytest.mark.parametrize("arch", ARCHES)
def test_clone3_is_enosys(arch: str) -> None:
    assert action(arch, "clone3") == ENOSYS
    assert action(arch, "clone3", 0x1000, 88) == ENOSYS


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize(("value", "want"), [
    (0x0, ALLOW),  # PER_LINUX
    (0x8, ALLOW),  # UNAME26
    (0x20000, ALLOW),  # PER_LINUX32
    (0x20008, ALLOW),
    (0xFFFFFFFF, ALLOW),  # the query
    ((1 << 32) | 0x0, ALLOW),  # unsigned int: the upper half never reaches the kernel
    (0x0040000, EPERM),  # ADDR_NO_RANDOMIZE
    (0x0400000, EPERM),  # READ_IMPLIES_EXEC
    (0x0000001, EPERM),  # PER_SVR4
    (0x0020001, EPERM),
    (0xFFFFFFFE, EPERM),
])
def test_personality(arch: str, value: int, want: int) -> None:
    assert action(arch, "personality", value) == want


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("audit", [AUDIT_ARCH_I386, AUDIT_ARCH_ARM, 0, 0xFFFFFFFF])
def test_another_abi_is_killed(arch: str, audit: int) -> None:
    program = seccomp.build(arch)
    for nr in (0, 1, 20, 39, 172, 250):
        assert run(program, nr, audit) == KILL


def test_one_arch_filter_refuses_the_other() -> None:
    assert run(seccomp.build("x86_64"), 63, AUDIT["aarch64"]) == KILL
    assert run(seccomp.build("aarch64"), 0, AUDIT["x86_64"]) == KILL


def test_x32_is_killed() -> None:
    program = seccomp.build("x86_64")
    x32 = 0x40000000
    for nr in (0, 39, 250, 272, 512, 547, 0x3FFFFFFF):
        assert run(program, x32 | nr, AUDIT["x86_64"]) == KILL, hex(x32 | nr)
    assert run(program, 0x7FFFFFFF, AUDIT["x86_64"]) == KILL
    # -1: a syscall a ptracer skipped; seccomp sees it again and the kernel says ENOSYS.
    assert run(program, -1, AUDIT["x86_64"]) == ALLOW


def test_aarch64_has_no_x32_rule() -> None:
    assert run(seccomp.build("aarch64"), 0x40000000, AUDIT["aarch64"]) == ALLOW


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("admin", [False, True])
def test_program_is_small_and_kernel_valid(arch: str, admin: bool) -> None:
    program = seccomp.build(arch, allow_admin=admin)
    assert len(decode(program)) < 100
    assert program == seccomp.build(arch, allow_admin=admin)  # pure


def test_install_refuses_what_is_not_a_program() -> None:
    with pytest.raises(ValueError, match="not a BPF program: 7 bytes"):
        seccomp.install(b"\0" * 7)
    with pytest.raises(ValueError, match="not a BPF program: 0 bytes"):
        seccomp.install(b"")


# -- for real: a child installs the filter and tries -----------------------------------------

PROBES = r"""
import ctypes, errno, json, os, subprocess, sys
from pytest_nsbox.kernel import arch as arch_table
from pytest_nsbox.kernel import libc, seccomp

mode = sys.argv[1]
if mode != "none":
    seccomp.install(seccomp.build(allow_admin=(mode == "admin")))
raw = ctypes.CDLL(None, use_errno=True)
raw.syscall.restype = ctypes.c_long

def call(name, *args):
    ctypes.set_errno(0)
    res = raw.syscall(ctypes.c_long(arch_table.number(name)), *[ctypes.c_long(a) for a in args])
    return "ok" if res >= 0 else errno.errorcode[ctypes.get_errno()]

def clone_ns():
    res = raw.syscall(ctypes.c_long(arch_table.number("clone")),
                      ctypes.c_long(libc.CLONE_NEWUTS | 17), *[ctypes.c_long(0)] * 4)
    if res == 0:  # the child, a copy of this process: leave at once
        os._exit(0)
    if res < 0:
        return errno.errorcode[ctypes.get_errno()]
    os.waitpid(res, 0)
    return "ok"

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    return "ok" if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7 else "bad status"

def spawn():  # vfork (or posix_spawn), then exec: the filter goes along
    out = subprocess.run(["grep", "Seccomp:", "/proc/self/status"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[1]

def posix_spawn():  # the init's fast path; glibc tries clone3 first, then clone
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], {}, setsid=True)
    return "ok" if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3 else "bad status"

nowhere = b"/nonexistent-nsbox-path"
results = {
    "setns(-1)": call("setns", -1, 0),
    "keyctl(GET_KEYRING_ID)": call("keyctl", 0, -3, 0),
    "userfaultfd": call("userfaultfd", os.O_CLOEXEC),
    "mount": call("mount", 0, ctypes.addressof(ctypes.create_string_buffer(nowhere)), 0, 0, 0),
    "umount2": call("umount2", ctypes.addressof(ctypes.create_string_buffer(nowhere)), 0),
    "clone3(NULL, 0)": call("clone3", 0, 0),
    "clone(NEWUTS)": clone_ns(),
    "personality(query)": call("personality", 0xFFFFFFFF),
    "personality(ADDR_NO_RANDOMIZE)": call("personality", 0x0040000),
    "fork": fork(),
    "subprocess, seccomp mode of the child": spawn(),
    "os.posix_spawn": posix_spawn(),
    "getpid": "ok" if os.getpid() > 1 else "bad",
    # last: in a new user namespace this process has no capability of the host's left
    "unshare(NEWNS)": call("unshare", libc.CLONE_NEWNS),
    "unshare(NEWUSER)": call("unshare", libc.CLONE_NEWUSER),
}
with open("/proc/self/status") as f:
    status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
results["NoNewPrivs"] = status["NoNewPrivs"].strip()
print(json.dumps(results))
"""

EXPECTED = {
    # without the filter: the control (root can do all this; a bad path fails on its own)
    "none": {
        "unshare(NEWNS)": "ok", "unshare(NEWUSER)": "ok", "setns(-1)": "EBADF",
        "keyctl(GET_KEYRING_ID)": "ok", "userfaultfd": "ok", "mount": "ENOENT",
        "umount2": "ENOENT", "clone3(NULL, 0)": "EINVAL", "clone(NEWUTS)": "ok",
        "personality(query)": "ok", "personality(ADDR_NO_RANDOMIZE)": "ok", "fork": "ok",
        "subprocess, seccomp mode of the child": "0", "os.posix_spawn": "ok",
        "getpid": "ok", "NoNewPrivs": "0",
    },
    "default": {
        "unshare(NEWNS)": "EPERM", "unshare(NEWUSER)": "EPERM", "setns(-1)": "EPERM",
        "keyctl(GET_KEYRING_ID)": "EPERM", "userfaultfd": "EPERM", "mount": "EPERM",
        "umount2": "EPERM", "clone3(NULL, 0)": "ENOSYS", "clone(NEWUTS)": "EPERM",
        "personality(query)": "ok", "personality(ADDR_NO_RANDOMIZE)": "EPERM", "fork": "ok",
        "subprocess, seccomp mode of the child": "2", "os.posix_spawn": "ok",
        "getpid": "ok", "NoNewPrivs": "1",
    },
    "admin": {
        "unshare(NEWNS)": "ok", "unshare(NEWUSER)": "ok", "setns(-1)": "EBADF",
        "keyctl(GET_KEYRING_ID)": "EPERM", "userfaultfd": "EPERM", "mount": "ENOENT",
        "umount2": "ENOENT", "clone3(NULL, 0)": "EINVAL", "clone(NEWUTS)": "ok",
        "personality(query)": "ok", "personality(ADDR_NO_RANDOMIZE)": "EPERM", "fork": "ok",
        "subprocess, seccomp mode of the child": "2", "os.posix_spawn": "ok",
        "getpid": "ok", "NoNewPrivs": "1",
    },
}


def probe(mode: str) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", PROBES, mode], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


@needs_root
@pytest.mark.parametrize("mode", list(EXPECTED))
def test_the_kernel_enforces_it(mode: str) -> None:
    got = probe(mode)
    want = dict(EXPECTED[mode])
    if mode != "default" and got["unshare(NEWUSER)"] != "ok":  # hosts may restrict userns
        want["unshare(NEWUSER)"] = got["unshare(NEWUSER)"]
    if mode == "none":
        with open("/proc/self/status", encoding="ascii") as f:  # under an outer filter?
            own = re.search(r"^Seccomp:\s+(\d+)", f.read(), re.MULTILINE)
        want["subprocess, seccomp mode of the child"] = own[1] if own else "0"
        if got["keyctl(GET_KEYRING_ID)"] != "ok":  # an outer filter's doing
            want["keyctl(GET_KEYRING_ID)"] = got["keyctl(GET_KEYRING_ID)"]
    assert got == want


ABI_PROBE = r"""
import ctypes, mmap, sys
from pytest_nsbox.kernel import seccomp
if sys.argv[1] == "filter":
    seccomp.install(seccomp.build())
if sys.argv[2] == "i386":
    # mov eax, 20 (i386 getpid); int 0x80; ret
    code = bytes.fromhex("b814000000cd80c3")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    print(ctypes.CFUNCTYPE(ctypes.c_int)(addr)())
else:  # x32 getpid
    raw = ctypes.CDLL(None, use_errno=True)
    raw.syscall.restype = ctypes.c_long
    print(raw.syscall(ctypes.c_long(0x40000000 | 39)), ctypes.get_errno())
"""


def abi_probe(mode: str, abi: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ABI_PROBE, mode, abi], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.skipif(arch_table.host() != "x86_64", reason="x86_64 ABIs")
@pytest.mark.parametrize("abi", ["i386", "x32"])
def test_the_kernel_kills_other_abis(abi: str) -> None:
    control = abi_probe("none", abi)
    assert control.returncode in (0, -signal.SIGSEGV), control.stderr  # SEGV: no ia32 emulation
    killed = abi_probe("filter", abi)
    assert killed.returncode == -signal.SIGSYS, (killed.returncode, killed.stdout, killed.stderr)


@needs_root
def test_nothing_is_imported_after_the_module_is() -> None:
    """The init calls these after ``pivot_root``, where the host's Python is out of reach."""
    script = ("import sys; from pytest_nsbox.kernel import seccomp, caps; "
              "before = set(sys.modules); last = caps.last_cap(); "
              "keep = caps.resolve(['NET_ADMIN'], [], False); "
              "caps.apply(keep, last); caps.names(keep); caps.mask(keep); "
              "seccomp.install(seccomp.build(caps=keep)); "
              "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_modules_import_only_the_stdlib() -> None:
    script = ("import sys; from pytest_nsbox.kernel import seccomp, caps; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('pytest', '_pytest', 'pluggy', 'pyroute2', 'filelock')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"

