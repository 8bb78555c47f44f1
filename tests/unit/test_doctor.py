"""``python -m pytest_nsbox doctor``: what this host gives boxes, and what to change.

On this host for real (a subprocess, as root and as a normal user), and with fake inputs
for what this host has (a sysctl that blocks user namespaces, no overlayfs, no cgroup
filesystem, processes in the way, a probe that crashes).

References: user_namespaces(7) (the maps, ``setgroups``); Debian's
``kernel.unprivileged_userns_clone``; Ubuntu 23.10+'s
``kernel.apparmor_restrict_unprivileged_userns`` and its AppArmor ``userns,`` rule
(ubuntu.com "Restricted unprivileged user namespaces"); Documentation/filesystems/
overlayfs.rst ("Permission model", ``userxattr``); rtnetlink(7) and linux/pkt_sched.h
``struct tc_netem_qopt`` as iproute2 ``tc/q_netem.c`` sends it; BenchExec
``benchexec/cgroupsv2.py`` (its fix-it texts for cgroups it cannot use).
"""
from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cgroupfs import FakeCgroupfs

from pytest_nsbox import cli
from pytest_nsbox.cgroups import V2Backend, hostinfo
from pytest_nsbox.errors import DOCTOR, HostNotSupported
from pytest_nsbox.kernel import hostcheck, userns
from pytest_nsbox.kernel.hostcheck import Finding, Probe

pytestmark = pytest.mark.timeout(120)

NAMES = ("user", "cgroups", "overlayfs", "user namespaces", "netem")


def doctor(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest_nsbox", *args, "doctor"]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
               "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=100)


def rows(text: str) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (tag, detail, fix lines) from doctor's report."""
    found: dict[str, tuple[str, str, list[str]]] = {}
    last = ""
    for line in text.splitlines()[1:-1]:
        if line.startswith(" " * 9 + "fix: "):
            found[last][2].append(line.split("fix: ", 1)[1])
            continue
        tag, rest = line[:8].strip(), line[9:]
        name = next(n for n in sorted(NAMES, key=len, reverse=True) if rest.startswith(n))
        detail = rest[len(name):].removeprefix(" (optional)").strip()
        found[name] = (tag, detail, [])
        last = name
    return found


def check_report(text: str) -> dict[str, tuple[str, str, list[str]]]:
    """Every piece once, in order; a fix line under each that is not ok; a verdict."""
    lines = text.splitlines()
    assert lines[0].startswith("pytest-nsbox ") and " doctor: Linux " in lines[0]
    found = rows(text)
    assert list(found) == list(NAMES)
    for name, (tag, _detail, fixes) in found.items():
        assert tag in ("ok", "limited", "MISSING", "missing"), (name, tag)
        assert bool(fixes) == (tag != "ok"), (name, tag, fixes)
    assert lines[-1].startswith(("boxes can run here", "boxes cannot run here"))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="the root report")
def test_doctor_as_root_on_this_host() -> None:
    """The real report of this host: root; its cgroup version and the limits boxes can
    have; overlayfs; user namespaces; netem, probed in a network namespace of its own."""
    done = doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    found = check_report(done.stdout)
    assert found["user"][:2] == ("ok", "root (uid 0): boxes run as root")
    cgroups = found["cgroups"][1]
    assert cgroups.startswith(("v1 (hybrid): ", "v2 at ")) and "limits: " in cgroups
    assert found["overlayfs"][0] == "ok"
    assert found["user namespaces"][1].startswith("not needed as root")
    netem = found["netem"]
    if netem[0] != "ok":  # this machine: no sch_netem; the VM's kernel has it
        assert "modprobe sch_netem" in netem[2][0]
    assert done.stdout.splitlines()[-1].startswith("boxes can run here")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to become another user (setpriv)")
@pytest.mark.usefixtures("reachable_by_others")
def test_doctor_as_a_normal_user_on_this_host() -> None:
    """As uid 65534: rootless boxes, user namespaces probed for that user, and cgroups
    reported as this user may use them (optional: they only carry the limits)."""
    done = doctor("--run", "/tmp/nsbox-doctor-test-65534", user=65534)
    assert done.returncode in (0, 1), done.stderr
    found = check_report(done.stdout)
    assert found["user"][1].startswith("uid 65534 (")
    assert "boxes run rootless" in found["user"][1]
    assert found["user namespaces"][0] in ("ok", "MISSING")
    assert found["cgroups"][0] in ("ok", "limited", "missing")  # optional: only the limits


# -- fake inputs -------------------------------------------------------------------------------

@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Probes that answer at once (each test changes the one it is about) and sysctls in
    a fake ``/proc/sys``."""
    sysctls = tmp_path / "sys"
    sysctls.mkdir()
    for name in ("SYSCTL_CLONE", "SYSCTL_MAX", "SYSCTL_APPARMOR"):
        monkeypatch.setattr(userns, name, str(sysctls / name))
    monkeypatch.setattr(userns, "probe", lambda timeout=10.0: None)
    monkeypatch.setattr(hostcheck, "probe_overlay_userxattr", lambda where: Probe(True))
    monkeypatch.setattr(hostcheck, "probe_netem", lambda: Probe(True))
    monkeypatch.setattr(hostinfo, "finding", lambda parent=None, **kw: Finding(
        "cgroups", True, "v2 at /sys/fs/cgroup: fake; limits: memory, cpus, pids"))
    return sysctls


def run_doctor(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, str]:
    code = cli.main(["--run", str(tmp_path / "run"), "doctor"])
    return code, capsys.readouterr().out


def rootless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "rootless", lambda: True)


@pytest.mark.parametrize("sysctl, value, expected", [
    ("SYSCTL_CLONE", "0", "kernel.unprivileged_userns_clone=1"),
    ("SYSCTL_MAX", "0", "user.max_user_namespaces"),
])
def test_a_sysctl_blocking_user_namespaces_names_its_fix(
        fake_host: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path, sysctl: str, value: str, expected: str) -> None:
    """A normal user on Debian with ``unprivileged_userns_clone=0``, or anywhere with
    ``max_user_namespaces=0``: boxes cannot run, and the line says which sysctl to set."""
    rootless(monkeypatch)
    (fake_host / sysctl).write_text(value + "\n")
    monkeypatch.setattr(userns, "probe", lambda timeout=10.0: userns.host_block())
    code, out = run_doctor(capsys, tmp_path)
    assert code == 1
    found = check_report(out)
    tag, _detail, fixes = found["user namespaces"]
    assert tag == "MISSING" and expected in fixes[0] and "sudo sysctl -w" in fixes[0]
    assert out.splitlines()[-1].startswith("boxes cannot run here")


def test_apparmor_restriction_gets_both_remedies(
        fake_host: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    """Ubuntu 24.04: the unshare succeeds, the mount in the namespace does not (EPERM);
    the fix names the AppArmor profile for this Python and the sysctl."""
    rootless(monkeypatch)
    (fake_host / "SYSCTL_APPARMOR").write_text("1\n")
    monkeypatch.setattr(userns, "probe", lambda timeout=10.0: userns.diagnose(
        "mount(tmpfs)", OSError(errno.EPERM, "Operation not permitted")))
    code, out = run_doctor(capsys, tmp_path)
    assert code == 1
    fix = rows(out)["user namespaces"][2][0]
    assert "apparmor_parser" in fix and "userns," in fix
    assert os.path.realpath(sys.executable) in fix
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in fix


def test_root_is_told_what_normal_users_would_meet(
        fake_host: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (fake_host / "SYSCTL_APPARMOR").write_text("1\n")
    found = hostcheck.userns_finding(rootless=False, probe=lambda: None)
    assert found.ok and not found.required
    assert "not needed as root" in found.detail and "normal users are blocked" in found.detail


def test_no_overlayfs_is_missing(fake_host: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "filesystems").write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n")
    sysfs = tmp_path / "sys"
    (sysfs / "module" / "ext4").mkdir(parents=True)
    found = hostcheck.overlay_finding(str(tmp_path), proc=str(proc), sysfs=str(sysfs),
                                      rootless=False)
    assert not found.ok and found.required
    assert found.fix and "modprobe overlay" in found.fix
    (sysfs / "module" / "overlay").mkdir()  # a loaded module counts even if not listed yet
    assert hostcheck.overlay_in_kernel(str(proc), str(sysfs))


def test_overlay_userxattr_failing_is_missing_only_rootless(fake_host: Path,
                                                            tmp_path: Path) -> None:
    """overlayfs.rst: unprivileged overlay mounts need ``userxattr`` (5.11+) and an upper
    filesystem with ``user.*`` xattrs; root mounts without it."""
    failing = lambda where: Probe(False, "mounting overlayfs with userxattr", errno.EINVAL)  # noqa: E731
    as_user = hostcheck.overlay_finding(str(tmp_path), rootless=True, probe=failing)
    assert not as_user.ok and as_user.fix and "5.11" in as_user.fix
    assert "Invalid argument" in as_user.detail
    as_root = hostcheck.overlay_finding(str(tmp_path), rootless=False, probe=failing)
    assert as_root.ok and as_root.fix is None


@pytest.mark.parametrize("code, tag, text", [
    (errno.ENOENT, "missing", "modprobe sch_netem"),
    (errno.EPERM, "missing", "run doctor as root"),
])
def test_netem_is_optional(fake_host: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str], tmp_path: Path, code: int,
                           tag: str, text: str) -> None:
    monkeypatch.setattr(hostcheck, "probe_netem", lambda: Probe(False, "adding a netem qdisc",
                                                                code))
    rc, out = run_doctor(capsys, tmp_path)
    assert rc == 0  # boxes run; only latency, jitter and loss need it
    found = rows(out)
    assert found["netem"][0] == tag and text in found["netem"][2][0]
    assert out.splitlines()[-1] == "boxes can run here; without netem"


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are required as root")
def test_no_cgroup_filesystem_is_missing_as_root(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    """``detect()``'s own fix-it line becomes the fix."""
    monkeypatch.setattr(userns, "probe", lambda timeout=10.0: None)
    monkeypatch.setattr(hostcheck, "probe_overlay_userxattr", lambda where: Probe(True))
    monkeypatch.setattr(hostcheck, "probe_netem", lambda: Probe(True))

    def no_cgroupfs(parent: str | None = None) -> V2Backend:
        raise HostNotSupported("cgroups: no cgroup filesystem is mounted; mount cgroup2")

    monkeypatch.setattr(hostinfo, "detect", no_cgroupfs)
    rc, out = run_doctor(capsys, tmp_path)
    assert rc == 1
    tag, detail, fixes = rows(out)["cgroups"]
    assert tag == "MISSING" and detail == "no usable cgroup hierarchy"
    assert fixes[0].startswith("cgroups: no cgroup filesystem is mounted; mount cgroup2")


def test_a_crashing_check_is_a_finding(fake_host: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    def broken(where: str) -> Probe:
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(hostcheck, "probe_overlay_userxattr", broken)
    rc, out = run_doctor(capsys, tmp_path)
    tag, detail, _fixes = rows(out)["overlayfs"]
    assert tag == "MISSING" and "could not be checked: RuntimeError: probe exploded" in detail
    assert rc == 1


# -- the cgroups line on fake v2 trees ---------------------------------------------------------

def v2(fs: FakeCgroupfs, tmp_path: Path, own: str = "/", parent: str | None = None,
       writable: bool = True) -> V2Backend:
    return V2Backend(fs.root, parent, mkdir=fs.mkdir, rmdir=fs.rmdir, write=fs.write,
                     own=own, records=str(tmp_path / "records"),
                     writable=lambda path: writable)


def test_cgroups_line_in_a_container(tmp_path: Path) -> None:
    """The namespace root holds our processes: doctor says they will move, and changes
    nothing itself."""
    fs = FakeCgroupfs(tmp_path / "cg", "cpu memory pids", real_root=False, procs=[1, 7])
    found = hostinfo.finding(backend=v2(fs, tmp_path), euid=0)
    assert found.ok and found.fix is None
    assert f"our processes move into {fs.root}/nsbox-owner" in found.detail
    assert "limits: memory, cpus, pids" in found.detail
    assert fs.writes == [] and fs.procs(fs.root) == [1, 7]


def test_cgroups_line_with_foreign_processes(tmp_path: Path) -> None:
    fs = FakeCgroupfs(tmp_path / "cg", enabled="memory")
    fs.mkdir(str(fs.root / "svc"))
    fs.set_procs(fs.root / "svc", [300])
    found = hostinfo.finding(backend=v2(fs, tmp_path, own="/me", parent="svc"), euid=0)
    assert not found.ok and found.fix and "processes of other programs" in found.fix


def test_cgroups_line_threaded(tmp_path: Path) -> None:
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu")
    fs.mkdir(str(fs.root / "t"))
    (fs.root / "t" / "cgroup.type").write_text("threaded\n")
    found = hostinfo.finding(backend=v2(fs, tmp_path, own="/me", parent="t"), euid=0)
    assert not found.ok and found.fix and "'threaded'" in found.fix


def test_cgroups_line_not_delegated(tmp_path: Path) -> None:
    fs = FakeCgroupfs(tmp_path / "cg", enabled="memory pids")
    found = hostinfo.finding(backend=v2(fs, tmp_path, own="/session-1.scope",
                                        writable=False), euid=1000)
    assert not found.ok and not found.required
    assert found.fix and "Delegate=yes" in found.fix
    assert "limits: none" in found.detail


def test_cgroups_line_missing_controllers(tmp_path: Path) -> None:
    """Some controllers not delegated: boxes run, those limits are named with their fix."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory pids")
    found = hostinfo.finding(backend=v2(fs, tmp_path), euid=0)
    assert found.ok and "limits: memory, pids" in found.detail
    assert found.fix and "'cpu' is not available" in found.fix


# -- probes ------------------------------------------------------------------------------------

def test_qdisc_request_encoding() -> None:
    """rtnetlink(7): nlmsghdr, struct tcmsg, TCA_KIND and TCA_OPTIONS attributes padded to
    4 bytes; flags REQUEST|ACK|CREATE|EXCL as ``tc qdisc add`` sends them."""
    msg = hostcheck.qdisc_request(7, "netem", hostcheck.NETEM_OPTIONS, seq=5)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq, pid) == (len(msg), 36, 5, 0)
    assert flags == 0x1 | 0x4 | 0x400 | 0x200
    family, _p1, _p2, ifindex, handle, parent, info = struct.unpack_from("=BBHiIII", msg, 16)
    assert (family, ifindex, handle, parent, info) == (0, 7, 0x10000, 0xFFFFFFFF, 0)
    alen, atype = struct.unpack_from("=HH", msg, 36)
    assert (alen, atype, msg[40:46]) == (10, 1, b"netem\0")
    alen, atype = struct.unpack_from("=HH", msg, 48)
    assert (alen, atype) == (28, 2) and len(msg) == 48 + 28
    ack = struct.pack("=IHHIIi", 36, 2, 0, 5, 0, -errno.ENOENT) + msg[:16]
    assert hostcheck.netlink_ack(ack, seq=5) == errno.ENOENT
    assert hostcheck.netlink_ack(ack, seq=6) is None
    assert hostcheck.netlink_ack(struct.pack("=IHHIIi", 36, 2, 0, 1, 0, 0) + msg[:16]) == 0


def test_qdisc_probe_against_the_kernel() -> None:
    """pfifo is in every kernel: the hand-made message is one the kernel takes; an unknown
    kind is ENOENT, what netem's absence looks like."""
    assert hostcheck.probe_qdisc("pfifo", None) == Probe(True)
    missing = hostcheck.probe_qdisc("nsbox-no-such-qdisc", None)
    assert missing == Probe(False, "adding a nsbox-no-such-qdisc qdisc", errno.ENOENT)


def test_run_probe_reports_the_step_and_errno() -> None:
    def fn(step: hostcheck.Step) -> None:
        step("first")
        step("second")
        raise OSError(errno.EPERM, "no")

    assert hostcheck.run_probe(fn) == Probe(False, "second", errno.EPERM)
    assert hostcheck.run_probe(lambda step: None) == Probe(True)
    assert Probe(False, "second", errno.EPERM).why() == "second: Operation not permitted"


def test_host_not_supported_points_to_doctor_once() -> None:
    """CONTRACT.md: a host that cannot run boxes skips with one line pointing to doctor."""
    line = str(HostNotSupported("nsbox needs overlayfs; load it with `modprobe overlay`"))
    assert line.endswith(f"; `{DOCTOR}` shows what this host lacks")
    already = f"cannot make a user namespace; run `{DOCTOR}` to see what this host lacks"
    assert str(HostNotSupported(already)) == already
    assert str(HostNotSupported(line)) == line  # pickled and raised again: once
