"""Networks: boxes of one test share a private network and find each other by name; the
test reaches into any box with ``connect``/``forward``; ``rate`` slows a box's link."""
import time
import urllib.request

import pytest


@pytest.mark.sandbox(image="busybox", network="private")
def test_client_and_server_by_name(nsbox_factory):
    server = nsbox_factory(name="server")
    client = nsbox_factory(name="client")
    server.spawn("nc -l -p 5000 -e echo pong")
    server.wait_for_port(5000, timeout=10)  # polls the box's socket table, never connects
    assert client.run("nc server 5000").stdout == "pong\n"
    assert client.ip != server.ip  # both on this test's own subnet


@pytest.mark.sandbox(image="busybox")
def test_the_host_talks_to_a_box(nsbox):
    nsbox.run("mkdir /www && echo hello > /www/index.html", check=True)
    nsbox.spawn("httpd -f -p 8080 -h /www")
    nsbox.wait_for_port(8080, timeout=10)
    host, port = nsbox.forward(8080)  # 127.0.0.1:<free port> on the host
    with urllib.request.urlopen(f"http://{host}:{port}/") as reply:
        assert reply.read() == b"hello\n"
    with nsbox.connect(8080) as sock:  # or a socket straight into the box
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 200"


@pytest.mark.sandbox(image="busybox", network="private", rate="8mbit")
def test_a_slow_link(nsbox_factory):
    sink = nsbox_factory(name="sink")
    source = nsbox_factory(name="source")
    sink.spawn("nc -l -p 5001 -e wc -c")
    sink.wait_for_port(5001, timeout=10)
    started = time.monotonic()
    sent = source.run("head -c 1000000 /dev/zero | nc sink 5001")
    assert sent.stdout.strip() == "1000000"
    assert time.monotonic() - started > 0.7  # 8 Mbit at 8 mbit/s: about a second
