"""Default confinement, like Docker's: each escape attempt below must fail, and says why."""
from __future__ import annotations

import os
import socket

import pytest

pytestmark = pytest.mark.sandbox(image="busybox")


def _fails(box, cmd: str) -> str:
    result = box.run(cmd, timeout=30)
    assert result.returncode != 0, f"{cmd!r} succeeded in the box: {result}"
    return result.stderr


def _read_size(box, path: str) -> int:
    """Bytes a box can read from path: masked files read empty (bind of /dev/null)."""
    return int(box.run(f"cat {path} 2>/dev/null | wc -c").stdout.strip())


def test_kernel_memory_and_keys_are_masked(nsbox):
    # This kernel has no /proc/kcore; where one exists, the box reads it empty.
    assert _read_size(nsbox, "/proc/kcore") == 0
    if os.path.exists("/proc/kcore"):
        assert nsbox.exists("/proc/kcore")
    with open("/proc/keys") as f:
        assert f.read(), "the host has keys to hide"
    assert _read_size(nsbox, "/proc/keys") == 0
    assert nsbox.run("cat /proc/timer_list | wc -c").stdout.strip() == "0"
    assert nsbox.run("cat /proc/timer_list | wc -c").stdout.strip() == "0"
    for masked_dir in ("/sys/firmware", "/proc/acpi"):
        if os.path.isdir(masked_dir) and os.listdir(masked_dir):
            assert nsbox.listdir(masked_dir) == [], masked_dir
            assert "Read-only" in _fails(nsbox, f"touch {masked_dir}/x")


def test_sysrq_and_proc_sys_are_read_only(nsbox):
    # never `echo c`: on an unprotected box it would crash the host
    why = _fails(nsbox, ": >> /proc/sysrq-trigger")
    if os.path.exists("/proc/sysrq-trigger"):
        assert "Read-only" in why
    else:  # this kernel is built without magic SysRq
        assert "nonexistent" in why or "No such file" in why
    assert "Read-only" in _fails(nsbox, "echo 3 > /proc/sys/vm/drop_caches")
    assert "Read-only" in _fails(nsbox, "echo 10 > /proc/sys/vm/swappiness")


def test_sys_and_cgroupfs_are_not_writable(nsbox):
    assert "Read-only" in _fails(nsbox, "touch /sys/x")
    _fails(nsbox, "echo 1 > /sys/fs/cgroup/release_agent")
    _fails(nsbox, "mkdir /sys/fs/cgroup/memory/x")
    assert nsbox.run("ls /sys/fs/cgroup | wc -l").stdout.strip() == "0"


def test_a_binary_in_dev_shm_does_not_run(nsbox):
    nsbox.run("cp /bin/busybox /dev/shm/bb && chmod +x /dev/shm/bb", check=True)
    assert "Permission denied" in _fails(nsbox, "/dev/shm/bb true")


def test_a_block_device_node_of_the_hosts_disk_cannot_be_read(nsbox):
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    _fails(nsbox, f"mknod /dev/disk b {major} {minor}")
    made = nsbox.run(f"mknod /tmp/disk b {major} {minor} && echo made")
    if "made" in made.stdout:
        assert "Permission denied" in _fails(nsbox, "head -c 512 /tmp/disk > /dev/null")


def test_the_hosts_hostname_cannot_be_changed(nsbox):
    before = socket.gethostname()
    assert "Operation not permitted" in _fails(nsbox, "hostname evil")
    assert socket.gethostname() == before


def test_mount_needs_privileged(nsbox):
    why = _fails(nsbox, "mkdir -p /mnt; mount -t tmpfs x /mnt")
    assert "permission denied" in why.lower() or "not permitted" in why


@pytest.mark.sandbox(privileged=True)
def test_privileged_gets_mount_back(nsbox):
    # Opt-in only: with CAP_SYS_ADMIN and no seccomp filter a box can mount (and so undo
    # much of its confinement); that is what `privileged` means, as in Docker.
    nsbox.run("mkdir -p /mnt && mount -t tmpfs x /mnt && touch /mnt/ok", check=True)
    assert nsbox.run("grep -c ' /mnt tmpfs' /proc/mounts").stdout.strip() == "1"


def test_new_namespaces_are_refused(nsbox):
    assert "Operation not permitted" in _fails(nsbox, "unshare -m true")
    assert "Operation not permitted" in _fails(nsbox, "unshare -U true")
    assert "Operation not permitted" in _fails(nsbox, "unshare -n true")


def test_default_capabilities_are_dockers(nsbox):
    status = nsbox.read_text("/proc/1/status")
    bounding = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("CapBnd:")), 16)
    expected = 0
    for bit in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31):
        expected |= 1 << bit
    assert bounding == expected
    eff = nsbox.run("grep CapEff /proc/self/status", check=True).stdout.split()[1]
    assert int(eff, 16) == expected
    nnp = nsbox.run("grep NoNewPrivs /proc/self/status", check=True).stdout.split()[1]
    assert nnp == "1"
    mode = nsbox.run("grep '^Seccomp:' /proc/self/status", check=True).stdout.split()[1]
    assert mode == "2"  # filter


@pytest.mark.sandbox(cap_drop=["NET_RAW", "CHOWN"], cap_add=["NET_ADMIN"])
def test_cap_add_and_drop(nsbox):
    eff = int(nsbox.run("grep CapEff /proc/self/status", check=True).stdout.split()[1], 16)
    assert eff & (1 << 12) and not eff & (1 << 13) and not eff & (1 << 0)
    assert "Operation not permitted" in _fails(nsbox, "chown 1 /tmp")
    nsbox.run("ip link set lo mtu 1400", check=True)  # NET_ADMIN


@pytest.mark.sandbox(seccomp=False)
def test_seccomp_can_be_turned_off(nsbox):
    mode = nsbox.run("grep '^Seccomp:' /proc/self/status", check=True).stdout.split()[1]
    assert mode == "0"


def test_no_host_process_is_visible(nsbox):
    pids = [p for p in nsbox.listdir("/proc") if p.isdigit()]
    assert len(pids) <= 3, pids
    assert not nsbox.exists(f"/proc/{os.getpid()}/environ") or os.getpid() in (1, 2, 3)


def test_no_descriptor_of_pytest_is_inherited(nsbox):
    leak = os.open("/etc/hostname", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(leak, True)
    try:
        fds = nsbox.run("ls /proc/self/fd", check=True).stdout.split()
        assert fds == ["0", "1", "2", "3"], fds
        assert nsbox.run(f"cat /proc/self/fd/{leak}").returncode != 0
    finally:
        os.close(leak)


def test_init_is_not_dumpable(nsbox):
    # /proc/1/exe would be the host's python: no way to open or overwrite it
    _fails(nsbox, "readlink /proc/1/exe")
    _fails(nsbox, "cat /proc/1/environ")


def test_mounts_are_private(nsbox):
    mountinfo = nsbox.read_text("/proc/1/mountinfo")
    assert "shared:" not in mountinfo and "master:" not in mountinfo


def test_mountpoint_symlinks_in_the_image_cannot_redirect_mounts(nsbox_factory, tmp_path):
    # A box whose image has /proc -> /host-path still gets its proc inside its own root.
    box = nsbox_factory(image="busybox")
    box.run("rm -rf /tmp/x && ln -s /etc /tmp/x", check=True)
    assert box.read_text("/tmp/x/passwd").startswith("root:")


@pytest.mark.sandbox(image="host", cap_drop=["SETUID", "SETGID"])
def test_user_switch_works_when_the_box_drops_setuid(nsbox):
    assert nsbox.run("id -u", user="nobody", check=True).stdout.strip() == "65534"
    eff = int(nsbox.run("grep CapEff /proc/self/status", check=True).stdout.split()[1], 16)
    assert not eff & (1 << 6) and not eff & (1 << 7)
    # ...but the box's own root cannot switch users any more
    import sys

    why = _fails(nsbox, f"{sys.executable} -c 'import os; os.setuid(65534)'")
    assert "PermissionError" in why and "not permitted" in why
