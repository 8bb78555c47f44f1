"""What a box may see of the host: its own processes, name, network and files only."""
from __future__ import annotations

import os
import secrets
import socket

import pytest


@pytest.mark.sandbox(image="busybox")
def test_ps_shows_only_the_box(nsbox):
    result = nsbox.run(["ps", "-o", "pid,args"], check=True)
    rows = [line.split(None, 1) for line in result.stdout.strip().splitlines()[1:]]
    pids = {int(pid): args for pid, args in rows}
    assert pids[1].startswith("nsbox-init"), pids
    assert any(args.startswith("ps ") for args in pids.values())
    assert len(pids) == 2, f"host processes visible in the box: {pids}"


@pytest.mark.sandbox(image="busybox")
def test_a_command_is_a_child_of_the_box_init(nsbox):
    result = nsbox.run("echo $PPID; cat /proc/1/cmdline | tr '\\0' ' '", check=True)
    ppid, init_cmdline = result.stdout.splitlines()
    assert ppid == "1"
    assert init_cmdline.startswith("nsbox-init")


@pytest.mark.sandbox(image="busybox", hostname="box")
def test_hostname_is_the_boxs_and_the_hosts_is_unchanged(nsbox):
    before = socket.gethostname()
    assert nsbox.run("hostname", check=True).stdout.strip() == "box"
    # Like Docker: renaming needs CAP_SYS_ADMIN, which a default box lacks.
    assert nsbox.run("hostname changed-inside").returncode != 0
    assert socket.gethostname() == before
    assert nsbox.read_text("/etc/hostname").strip() == "box"
    assert "box" in nsbox.read_text("/etc/hosts")


@pytest.mark.sandbox(image="busybox")
def test_only_loopback_and_it_is_up(nsbox):
    assert nsbox.run("ls /sys/class/net", check=True).stdout.split() == ["lo"]
    link = nsbox.run(["ip", "-o", "link"], check=True).stdout
    assert link.count("\n") == 1 and "lo:" in link and "UP" in link
    nsbox.spawn(["nc", "-l", "-p", "7000", "-e", "echo", "pong"])
    reply = nsbox.run("for i in $(seq 50); do echo ping | nc 127.0.0.1 7000 && exit 0; "
                      "usleep 20000; done; exit 1", timeout=10)
    assert reply.returncode == 0 and "pong" in reply.stdout


@pytest.mark.sandbox(image="busybox")
def test_host_root_and_the_tests_directory_are_not_visible(nsbox, tmp_path):
    sentinel = tmp_path / f"sentinel-{secrets.token_hex(4)}"
    sentinel.write_text("host file")
    here = os.path.dirname(os.path.abspath(__file__))
    assert os.listdir("/root"), "the host's /root should hold something to hide"
    assert nsbox.run("ls -A /root", check=True).stdout.strip() == ""
    for path in (str(sentinel), here, os.path.join(here, "conftest.py")):
        assert nsbox.run(["test", "-e", path]).returncode == 1, path
        assert not nsbox.exists(path)


@pytest.mark.sandbox(image="busybox")
def test_own_proc_and_minimal_dev(nsbox):
    dev = set(nsbox.listdir("/dev"))
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "fd",
            "stdin", "stdout", "stderr", "ptmx"} <= dev
    assert "vda" not in dev and "sda" not in dev
    out = nsbox.run("head -c 4 /dev/zero | od -An -tx1; echo x > /dev/null; echo ok", check=True)
    assert "00 00 00 00" in out.stdout and "ok" in out.stdout
    assert nsbox.run("touch /sys/x").returncode != 0
    mounts = nsbox.read_text("/proc/1/mounts")
    assert "sysfs /sys sysfs ro" in mounts
    assert nsbox.run("ls /proc | grep -c '^[0-9]'").stdout.strip() in ("1", "2", "3", "4")


def test_a_file_written_in_one_tests_box_is_gone_in_the_next(pytester):
    name = f"/tmp/probe-{secrets.token_hex(4)}"
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.sandbox(image="busybox")
        def test_write(nsbox):
            nsbox.run("echo hi > {name}", check=True)
            assert nsbox.exists("{name}")

        @pytest.mark.sandbox(image="busybox")
        def test_read(nsbox):
            assert not nsbox.exists("{name}")
            assert nsbox.run("test -e {name}").returncode == 1
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


@pytest.mark.sandbox(image="host")
def test_host_image_writes_to_etc_stay_in_the_box(nsbox):
    probe = f"/etc/nsbox-probe-{secrets.token_hex(4)}"
    with open("/etc/passwd", "rb") as f:
        passwd = f.read()
    nsbox.run(f"echo changed > {probe}; echo changed >> /etc/passwd", check=True)
    assert nsbox.read_text(probe) == "changed\n"
    assert not os.path.exists(probe)
    with open("/etc/passwd", "rb") as f:
        assert f.read() == passwd
    changes = {(c.kind, c.path) for c in nsbox.diff()}
    assert ("A", probe) in changes and ("C", "/etc/passwd") in changes


@pytest.mark.sandbox(image="host")
def test_host_image_has_fresh_dirs_and_sees_the_rootdir_read_only(nsbox, pytestconfig):
    rootdir = str(pytestconfig.rootpath)
    import sys

    bound = {rootdir, sys.prefix, sys.base_prefix}
    for path in ("/tmp", "/home", "/run", "/root"):
        # Only the first component of a bound path (e.g. /tmp/<rootdir>) may show here.
        allowed = {p[len(path) + 1:].split("/")[0] for p in bound if p.startswith(path + "/")}
        assert set(nsbox.listdir(path)) <= allowed, path
        assert nsbox.run(["ls", "-A", path]).stdout.split() == sorted(
            set(nsbox.listdir(path))), path
    assert nsbox.exists(os.path.join(rootdir, "pyproject.toml"))
    denied = nsbox.run(["touch", os.path.join(rootdir, "nsbox-write-probe")])
    assert denied.returncode != 0 and "Read-only" in denied.stderr
    import sys

    ran = nsbox.run([sys.executable, "-c", "import sys; print(sys.prefix)"], check=True)
    assert ran.stdout.strip() == sys.prefix


@pytest.mark.sandbox(image="scratch")
def test_scratch_is_empty(nsbox):
    assert set(nsbox.listdir("/")) <= {"proc", "dev", "sys", "etc"}
    result = nsbox.run(["/bin/sh", "-c", "true"])
    assert result.returncode == 127 and "No such file" in result.stderr


@pytest.mark.sandbox(image="busybox")
def test_file_methods_resolve_inside_the_box(nsbox, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    nsbox.run(f"ln -s {secret} /tmp/link; ln -s ../../../../{secret} /tmp/rel", check=True)
    for link in ("/tmp/link", "/tmp/rel"):
        with pytest.raises(FileNotFoundError):
            nsbox.read_text(link)
    nsbox.run("ln -s / /tmp/root", check=True)
    assert nsbox.listdir("/tmp/root/") == nsbox.listdir("/")
    name = f"/tmp/via-link-{secrets.token_hex(4)}"
    nsbox.write_text(f"/tmp/root{name}", "via link")
    assert nsbox.run(["cat", name], check=True).stdout == "via link"
    assert not os.path.exists(name)
    assert nsbox.read_bytes("/../../etc/passwd").startswith(b"root:")


@pytest.mark.sandbox(image="busybox")
def test_pid_1_reaps_orphans(nsbox):
    nsbox.run("sh -c 'sleep 0.2 & exit 0'; sh -c '(sleep 0.1 &) ; exit 0'", check=True)
    nsbox.run("sleep 0.5", check=True)
    states = nsbox.run("cat /proc/[0-9]*/stat", check=True).stdout
    assert ") Z " not in states, states


@pytest.mark.sandbox(image="busybox", network="host")
def test_host_network_keeps_the_hosts_interfaces(nsbox):
    host = sorted(os.listdir("/sys/class/net"))
    assert nsbox.run("ls /sys/class/net", check=True).stdout.split() == host
    assert nsbox.run("hostname", check=True).stdout.strip() == nsbox.hostname


@pytest.mark.sandbox(image="busybox", privileged=True, hostname="box")
def test_a_privileged_box_renames_only_itself(nsbox):
    before = socket.gethostname()
    nsbox.run("hostname changed-inside", check=True)
    assert nsbox.run("hostname", check=True).stdout.strip() == "changed-inside"
    assert socket.gethostname() == before
