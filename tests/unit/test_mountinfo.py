"""kernel/mountinfo.py: the one mountinfo reader.

Format and escapes from proc_pid_mountinfo(5) and the kernel's fs/proc_namespace.c
(``show_mountinfo``: ``seq_path_root``/``mangle`` escape space, tab, newline and backslash
as ``\\ooo``) and fs/overlayfs/params.c (``ovl_show_options`` writes ``lowerdir=`` through
``seq_show_option``, which escapes commas too).
"""
from __future__ import annotations

from pytest_nsbox.kernel import mountinfo

LINES = (
    "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
    "40 36 0:41 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
    "51 36 0:52 / /run/b\\134ox\\011tab rw - overlay nsbox rw,lowerdir=/l/a\\054b:/l/c,upperdir=/u\n"
    "not a mountinfo line\n"
    "52 36 0:53 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw\n"
)


def test_fields_and_escapes() -> None:
    mounts = mountinfo.parse(LINES)
    assert [m.point for m in mounts] == ["/mnt/with space", "/sys/fs/cgroup/cpu,cpuacct",
                                         "/run/b\\ox\ttab", "/dev/shm"]
    first = mounts[0]
    assert (first.mount_id, first.parent_id, first.device, first.root) == (36, 35, "98:0", "/mnt1")
    assert first.options == ("rw", "noatime")
    assert (first.fstype, first.source) == ("ext3", "/dev/root")
    assert first.super_options == ("rw", "errors=continue")


def test_optional_fields_do_not_shift_the_rest() -> None:
    """Zero or more optional fields (``shared:9``, ``master:1``) end at the ``-``."""
    cgroup = mountinfo.parse(LINES)[1]
    assert (cgroup.fstype, cgroup.super_options) == ("cgroup", ("rw", "cpu", "cpuacct"))


def test_super_options_split_before_unescaping() -> None:
    """An escaped comma in a layer path stays in its option (``\\054``)."""
    overlay = mountinfo.parse(LINES)[2]
    assert overlay.option("lowerdir") == "/l/a,b:/l/c"
    assert overlay.option("upperdir") == "/u"
    assert overlay.option("workdir") is None


def test_this_process_has_a_root_mount() -> None:
    assert any(m.point == "/" for m in mountinfo.read())
