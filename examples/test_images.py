"""The built-in images: the host's own OS, busybox, and the empty scratch image."""
import os
import sys

import pytest


@pytest.mark.sandbox(image="host")
def test_host_image_runs_the_hosts_programs_copy_on_write(nsbox, tmp_path_factory):
    assert nsbox.run([sys.executable, "-c", "print(6 * 7)"]).stdout == "42\n"
    nsbox.run("echo 'box only' > /etc/motd")
    assert nsbox.read_text("/etc/motd") == "box only\n"
    if os.path.exists("/etc/motd"):
        with open("/etc/motd") as f:
            assert f.read() != "box only\n"  # the host's file is untouched
    host_tmp = tmp_path_factory.getbasetemp()  # somewhere under the host's /tmp
    assert not nsbox.exists(str(host_tmp))  # the box has a fresh /tmp


@pytest.mark.sandbox(image="busybox")
def test_busybox_image_has_every_applet(nsbox):
    assert nsbox.run("which sh ls ip wget").stdout.split() == [
        "/bin/sh", "/bin/ls", "/sbin/ip", "/usr/bin/wget"]


@pytest.mark.sandbox(image="scratch")
def test_scratch_is_empty(nsbox):
    assert "bin" not in nsbox.listdir("/")
