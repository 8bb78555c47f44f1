"""The marker configures the box; the `nsbox` fixture hands it to the test."""
import socket

import pytest


@pytest.mark.sandbox(image="busybox", hostname="web")
def test_a_box_has_its_own_name_processes_and_network(nsbox):
    assert nsbox.run("hostname").stdout.strip() == "web"
    assert socket.gethostname() != "web"  # the host keeps its own name
    ps = nsbox.run(["ps", "-o", "pid,comm"]).stdout.splitlines()
    assert len(ps) == 3  # header, the box's init, and ps itself
    assert nsbox.run("ls /sys/class/net").stdout.split() == ["lo"]


@pytest.mark.sandbox(image="busybox")
def test_files_go_in_and_come_out(nsbox):
    nsbox.write_text("/tmp/config.ini", "[app]\nmode = test\n")
    result = nsbox.run("grep mode /tmp/config.ini | cut -d= -f2", check=True)
    assert result.stdout.strip() == "test"
    nsbox.run("echo done > /tmp/out.txt")
    assert nsbox.read_text("/tmp/out.txt") == "done\n"


@pytest.mark.sandbox(image="busybox")
def test_diff_shows_what_the_box_changed(nsbox):
    nsbox.run("touch /tmp/new; rm /etc/group; echo x >> /etc/passwd", check=True)
    assert [str(change) for change in nsbox.diff()] == [
        "C /etc", "D /etc/group", "C /etc/passwd", "C /tmp", "A /tmp/new"]


def test_several_boxes_in_one_test(nsbox_factory):
    server = nsbox_factory(image="busybox", name="server")
    client = nsbox_factory(image="busybox", name="client", memory="32M")
    server.write_text("/tmp/data", "only on the server")
    assert not client.exists("/tmp/data")


@pytest.mark.sandbox(image="busybox")
def test_background_processes(nsbox):
    worker = nsbox.spawn("for i in 1 2 3; do echo tick $i; sleep 0.1; done")
    result = worker.wait(timeout=10)
    assert result.stdout.split("\n")[:3] == ["tick 1", "tick 2", "tick 3"]
