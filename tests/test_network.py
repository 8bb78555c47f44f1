"""Private networks, shaping, and reaching boxes from the test (issue 5).

Every test here runs busybox boxes. Around the module: the host's own network namespace
(links, addresses, routes) must be exactly as it was, and no switch namespace or subnet
lease of this process may be left.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator

import pytest

from pytest_nsbox import Box, BoxClosed, BoxError
from pytest_nsbox.network import PortRefused, PortTimeout, active, collect_garbage
from pytest_nsbox.network import netns as nsb_netns
from pytest_nsbox.network.leases import POOL, Leases, owner_alive
from pytest_nsbox.runtime.engine import default_engine
from pytest_nsbox.kernel import userns
from pytest_nsbox.runtime.owner import netns_runner
from pytest_nsbox.state import StateDirs

pytestmark = pytest.mark.sandbox(image="busybox", network="private")


def host_network() -> dict[str, str]:
    """The host namespace's links, addresses and routes, without lifetimes that tick."""
    out = {}
    for args in (["link"], ["addr"], ["route"], ["-6", "route"], ["rule"]):
        text = subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout
        text = re.sub(r"\n\s+valid_lft .*", "", text)
        out[" ".join(args)] = re.sub(r"expires \d+sec", "expires", text)
    return out


def others_switches() -> set[str]:
    """Switch namespaces leased by other live processes (xdist workers, other runs)."""
    return {x.netns for x in Leases(default_engine().dirs.run).held()
            if x.owner_pid != os.getpid() and owner_alive(x.owner_lock)}


@pytest.fixture(scope="module", autouse=True)
def host_network_untouched() -> Iterator[None]:
    before = host_network()
    named_before = set(nsb_netns.list_named())
    yield
    assert host_network() == before, "the host's own network namespace changed"
    assert active() == [], "networks of this process still alive"
    assert [x for x in Leases(default_engine().dirs.run).held()
            if x.owner_pid == os.getpid()] == [], "leases of this process left"
    others = others_switches()
    left = set(nsb_netns.list_named()) - named_before - others
    assert left == set(), "network namespaces left behind"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line for line in f if "/run/netns/nsbox" in line]
    assert [m for m in mounts if not any(f"/run/netns/{n} " in m for n in others | named_before)
            ] == [], "switch namespace mounts left behind"


# -- private networks -----------------------------------------------------------------------

def test_two_boxes_talk_by_name(nsbox_factory):
    server = nsbox_factory(name="server")
    client = nsbox_factory(name="client")
    listener = server.spawn("nc -l -p 5000 -e echo hello from server")
    server.wait_for_port(5000, timeout=10)  # never connects: nc -l serves one client only
    answer = client.run("nc server 5000", timeout=10)
    assert answer.stdout == "hello from server\n", answer
    assert listener.wait(timeout=10).returncode == 0


def test_addresses_routes_and_etc_hosts(nsbox_factory):
    db = nsbox_factory(name="db")
    web = nsbox_factory(name="web", hostname="www")
    subnet = ipaddress.ip_network(f"{db.ip}/24", strict=False)
    assert subnet.subnet_of(POOL) and ipaddress.ip_address(web.ip) in subnet
    gateway = str(subnet.network_address + 1)
    assert web.run("ip route").stdout.splitlines()[0] == f"default via {gateway} dev eth0 "
    hosts = f"{db.ip}\tdb\n{web.ip}\tweb www\n"
    for box in (db, web):
        assert box.read_text("/etc/hosts").endswith(hosts)
        assert box.read_text("/etc/hosts").startswith("127.0.0.1\tlocalhost\n")
    assert web.run("ping -c 1 -W 5 db", timeout=10).returncode == 0
    assert db.run("ping -c 1 -W 5 www", timeout=10).returncode == 0
    assert "/etc/hosts" not in [c.path for c in web.diff()]
    names = web.run("ip -o link").stdout
    assert "eth0" in names and "nsb" not in names  # the switch side is not in the box


def test_the_switch_lives_until_the_last_box_leaves(nsbox_factory):
    """The switch namespace lives while a box of its group does. A root owner's is named
    (``/run/netns/<switch>``, as ``ip netns add`` names one); a rootless owner's is
    anonymous, held by its agent (network/netns.py), so there the gateway answering a
    ping is what shows the switch alive."""
    first = nsbox_factory(name="first")
    second = nsbox_factory(name="second")
    ((switch, subnet, group, members),) = [a for a in active() if "first" in a[3]]
    assert group.endswith("test_the_switch_lives_until_the_last_box_leaves")
    assert members == ["first", "second"] and switch.startswith("nsbox-net-")
    named = netns_runner().named
    assert named == (not userns.rootless())
    assert os.path.exists(f"/run/netns/{switch}") == named
    gateway = str(next(ipaddress.ip_network(subnet).hosts()))
    first.close()
    assert "first" not in second.read_text("/etc/hosts")
    assert second.run(f"ping -c 1 -W 5 {gateway}", timeout=10).returncode == 0
    assert os.path.exists(f"/run/netns/{switch}") == named
    second.close()
    assert not os.path.exists(f"/run/netns/{switch}")
    assert [a for a in active() if a[0] == switch] == []
    assert subnet not in [x.subnet for x in Leases(default_engine().dirs.run).held()
                          if x.owner_pid == os.getpid()]


def test_boxes_outside_pytest_share_one_default_group():
    with Box(image="busybox", network="private", name="a") as a, \
            Box(image="busybox", network="private", name="b") as b:
        assert a.run("ping -c 1 -W 5 b", timeout=10).returncode == 0
        assert b.ip != a.ip
    assert active() == []


def test_a_box_without_a_private_network_has_no_ip():
    with Box(image="busybox") as box:
        assert box.ip is None
        assert "eth0" not in box.run("ip -o link").stdout


ISOLATION = """
    import ipaddress, json, os, time
    import pytest

    SHARED = os.environ["NSBOX_SHARED"]

    def publish(name, data):
        with open(os.path.join(SHARED, name + ".tmp"), "w") as f:
            json.dump(data, f)
        os.rename(os.path.join(SHARED, name + ".tmp"), os.path.join(SHARED, name))

    def await_file(name, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(os.path.join(SHARED, name)) as f:
                    return json.load(f)
            except FileNotFoundError:
                time.sleep(0.05)
        raise AssertionError(f"{name} never came: the two tests did not run at once")

    @pytest.mark.sandbox(image="busybox", network="private")
    @pytest.mark.parametrize("me,other", [("a", "b"), ("b", "a")])
    def test_pair(nsbox_factory, me, other):
        server = nsbox_factory(name="server")
        client = nsbox_factory(name="client")
        server.spawn(f"nc -ll -p 7000 -e echo {me}")
        server.wait_for_port(7000, 10)
        assert client.run("nc -w 2 server 7000", timeout=10).stdout == f"{me}\\n"
        publish(me, {"ip": server.ip, "pid": os.getpid()})
        peer = await_file(other)
        assert peer["pid"] != os.getpid()
        mine = ipaddress.ip_network(f"{server.ip}/24", strict=False)
        assert ipaddress.ip_address(peer["ip"]) not in mine
        for box in (client, server):
            probe = box.run(f"nc -w 2 {peer['ip']} 7000", timeout=10)
            assert probe.returncode != 0 and probe.stdout == "", probe
            assert box.run(f"ping -c 1 -W 1 {peer['ip']}", timeout=10).returncode != 0
        publish(me + ".done", {})
        await_file(other + ".done")
"""


def test_tests_running_at_once_cannot_reach_each_other(pytester, monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("NSBOX_SHARED", str(shared))
    pytester.makepyfile(test_pair=textwrap.dedent(ISOLATION))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", timeout=170)
    result.assert_outcomes(passed=2)
    assert sorted(os.listdir(shared)) == ["a", "a.done", "b", "b.done"]


# -- shaping ------------------------------------------------------------------------------

def send_time(sender, receiver, size: int) -> float:
    """Seconds for ``size`` bytes from ``sender`` to ``receiver`` over TCP (busybox nc)."""
    counter = receiver.spawn("nc -l -p 5001 -e wc -c")
    receiver.wait_for_port(5001, timeout=10)
    started = time.monotonic()
    sent = sender.run(f"head -c {size} /dev/zero | nc {receiver.name} 5001", timeout=60)
    took = time.monotonic() - started
    assert sent.stdout.strip() == str(size), sent
    counter.wait(timeout=10)
    return took


@pytest.mark.sandbox(rate="1mbit")
def test_one_megabyte_at_one_megabit_takes_eight_seconds(nsbox_factory):
    a = nsbox_factory(name="a")
    b = nsbox_factory(name="b")
    took = send_time(a, b, 1_000_000)
    print(f"1 MB at 1mbit: {took:.2f} s")
    assert 8 * 0.7 <= took <= 8 * 1.3


def test_rate_limits_what_a_box_receives_too(nsbox_factory):
    slow = nsbox_factory(name="slow", rate="4mbit")
    fast = nsbox_factory(name="fast")
    took = send_time(fast, slow, 1_000_000)  # only the receiver is shaped
    print(f"1 MB to a 4mbit box: {took:.2f} s")
    assert 2 * 0.7 <= took <= 2 * 1.3
    # The unshaped box is not held to the rate: relative, since an emulated kernel (the VM
    # job) needs about 1 s for the megabyte even without shaping.
    assert send_time(fast, nsbox_factory(name="free"), 1_000_000) < 0.75 * took


def netem_in_kernel() -> bool | None:
    try:
        import gzip

        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        return None
    return bool(re.search(r"^CONFIG_NET_SCH_NETEM=[ym]", config, re.MULTILINE))


def netem_box(nsbox_factory, shaped: str):
    """The box ``slow`` with this test's netem marker, and a plain ``peer`` on its network;
    None where the kernel has no ``sch_netem``, after checking the error says so (this
    machine; the VM job's kernel has it)."""
    try:
        box = nsbox_factory(name="slow")
    except BoxError as exc:
        assert netem_in_kernel() is not True
        assert "box 'slow'" in str(exc) and shaped in str(exc)
        assert "kernel module sch_netem is missing" in str(exc)
        assert active() == []  # the half-built network went with the box
        return None
    assert netem_in_kernel() is not False
    nsbox_factory(name="peer", latency=None, jitter=None, loss=None)
    return box


def ping_times(box, count: int, interval: float = 0.2) -> tuple[list[float], int]:
    """Round-trip times in ms of the replies ``box`` got from ``peer``, and how many of
    ``count`` echo requests were answered (busybox ping)."""
    done = box.run(f"ping -c {count} -i {interval} -W 2 peer", timeout=120)
    rtts = [float(t) for t in re.findall(r"time=([\d.]+) ms", done.stdout)]
    received = re.search(r"(\d+) packets received", done.stdout)
    assert received, done
    return rtts, int(received.group(1))


@pytest.mark.sandbox(latency="50ms")
def test_latency_needs_sch_netem(nsbox_factory):
    """tc-netem(8) ``delay 50ms`` on what the box sends: every round trip to a plain
    peer takes at least 50 ms (the peer's answer is not delayed)."""
    box = netem_box(nsbox_factory, "latency='50ms'")
    if box is None:
        return
    rtts, _ = ping_times(box, 3)
    assert rtts and min(rtts) >= 50


@pytest.mark.sandbox(latency="50ms", jitter="40ms")
def test_jitter_spreads_the_delay(nsbox_factory):
    """tc-netem(8) ``delay 50ms 40ms``: each packet's delay is drawn between 10 and 90 ms
    (netem's default uniform distribution), so twenty round trips spread over tens of
    milliseconds around 50, never below 10; the upper bound is loose for the VM job's
    emulated CPU."""
    box = netem_box(nsbox_factory, "jitter='40ms'")
    if box is None:
        return
    rtts, received = ping_times(box, 20)
    assert received == 20 and len(rtts) == 20
    assert min(rtts) >= 10 and max(rtts) < 400
    assert max(rtts) - min(rtts) >= 20, rtts
    assert 25 <= sorted(rtts)[10] <= 150  # the median near 50


@pytest.mark.sandbox(loss="50%")
def test_loss_drops_about_that_share(nsbox_factory):
    """tc-netem(8) ``loss 50%`` on what the box sends: of 60 echo requests about half
    reach the peer and are answered (binomial: 30 +- 3.9; the bounds are over 4 standard
    deviations wide). netem drops ARP requests too, so the box first pings until one
    answer comes back: then the peer's address is resolved, and the 60 count only echo
    requests (unresolved, about 1 run in 30 lost every one of them)."""
    box = netem_box(nsbox_factory, "loss='50%'")
    if box is None:
        return
    box.run("until ping -c 1 -W 1 peer >/dev/null; do :; done", timeout=60, check=True)
    _, received = ping_times(box, 60, interval=0.05)
    assert 12 <= received <= 48, received


def test_a_rate_tbf_cannot_do_fails_the_box_and_leaves_no_network(nsbox_factory):
    with pytest.raises(BoxError, match=r"box 'trickle': rate 500bit is below what tbf can "):
        nsbox_factory(name="trickle", rate="500bit")
    assert active() == []


def test_shaping_a_box_without_a_private_network_is_refused(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(rate="1mbit")
        def test_shaped(nsbox):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*::test_shaped: sandbox(rate='1mbit'): shaping needs a "
                                 "private network (network='none' is loopback only); use e.g. "
                                 "network='private'"])


# -- reaching a box from the test ---------------------------------------------------------

@pytest.mark.sandbox(network="none")
def test_connect_into_a_box_without_network(nsbox):
    nsbox.spawn("nc -l -p 6000 -e echo hi")
    with nsbox.connect(6000, timeout=10) as sock:  # retried until nc listens
        assert sock.recv(100) == b"hi\n"
    with pytest.raises(PortRefused, match=r"box '.*': nothing accepts TCP connections on port"):
        nsbox.connect(6001)


def test_connect_and_wait_time_out_naming_box_and_port(nsbox_factory):
    box = nsbox_factory(name="quiet")
    started = time.monotonic()
    with pytest.raises(PortTimeout, match=r"box 'quiet': nothing listened on TCP port 81 "
                                          r"within 0.3 s"):
        box.wait_for_port(81, 0.3)
    with pytest.raises(TimeoutError, match=r"box 'quiet'.* port 82 within 0.3 s"):
        box.connect(82, timeout=0.3)
    assert time.monotonic() - started < 3


def test_connect_reaches_a_server_on_the_box_address_only(nsbox_factory):
    box = nsbox_factory(name="bound")
    box.run("mkdir /www && echo eth0 only > /www/index.html", check=True)
    box.spawn(f"httpd -f -p {box.ip}:6100 -h /www")
    box.wait_for_port(6100, 10)
    with box.connect(6100) as sock:
        sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.") and reply.endswith(b"\r\n\r\neth0 only\n")


def test_forward_serves_a_host_http_client(nsbox_factory):
    web = nsbox_factory(name="web")
    web.run("mkdir -p /www && echo '<h1>hello</h1>' > /www/index.html", check=True)
    web.spawn("httpd -f -p 8080 -h /www")
    web.wait_for_port(8080, timeout=10)
    host, port = web.forward(8080)
    assert host == "127.0.0.1" and port != 8080
    for _ in range(3):  # one relay per connection
        with urllib.request.urlopen(f"http://{host}:{port}/index.html", timeout=10) as reply:
            assert reply.status == 200 and reply.read() == b"<h1>hello</h1>\n"
    big = os.urandom(3 << 20)
    web.write_bytes("/www/big.bin", big)
    with urllib.request.urlopen(f"http://{host}:{port}/big.bin", timeout=20) as reply:
        assert reply.read() == big
    web.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/index.html", timeout=5)


@pytest.mark.sandbox(network="none")
def test_forward_of_a_closed_port_closes_the_client(nsbox):
    host, port = nsbox.forward(9)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/", timeout=5)
    nsbox.close()
    with pytest.raises(BoxClosed):
        nsbox.forward(9)
    with pytest.raises(BoxClosed):
        nsbox.wait_for_port(9, 1)


# -- after a crash --------------------------------------------------------------------------

def test_gc_removes_a_dead_owners_switch_and_lease(tmp_path):
    """A dead owner's lease goes, and with a root owner its named switch namespace (a
    rootless owner's switch is anonymous: it went with its agent when the owner died)."""
    dirs = StateDirs(store=str(tmp_path / "store"), run=str(tmp_path / "run"))
    dead = tmp_path / "dead-owner.lock"
    dead.touch()
    name = f"nsbox-net-test{os.getpid()}"
    lease = Leases(dirs.run).acquire(netns_name=name, owner_lock=str(dead), group="crashed")
    named = netns_runner().named
    switch = [f"network namespace {name}"] if named else []
    if named:
        os.close(nsb_netns.create_named(name))
        assert name in nsb_netns.list_named()
    assert collect_garbage(dirs, dry_run=True) == [
        *(f"would remove {x}" for x in switch), f"would remove lease of {lease.describe()}"]
    assert Leases(dirs.run).held() == [lease]
    assert (name in nsb_netns.list_named()) == named
    removed = collect_garbage(dirs)
    assert removed == [*(f"removed {x}" for x in switch),
                       f"removed lease of {lease.describe()}"]
    assert name not in nsb_netns.list_named()
    assert Leases(dirs.run).held() == []
    assert collect_garbage(dirs) == []


def test_a_killed_pytest_leaves_a_lease_the_next_allocation_reclaims(tmp_path):
    """A pytest killed with -9 leaves its lease (and, as root, its named switch); the next
    allocation takes the subnet back and removes what the dead owner left."""
    run = str(tmp_path / "run")
    name = f"nsbox-net-killed{os.getpid()}"
    named = netns_runner().named
    code = textwrap.dedent(f"""
        import fcntl, os
        from pytest_nsbox.network import leases, netns
        owner = {str(tmp_path / "owner.lock")!r}
        fd = os.open(owner, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        leases.Leases({run!r}).acquire(netns_name={name!r}, owner_lock=owner, group="g")
        if {named!r}:
            netns.create_named({name!r})
        os.kill(os.getpid(), 9)
    """)
    try:
        killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=False)
        assert killed.returncode == -9, killed.stderr
        assert (name in nsb_netns.list_named()) == named
        assert [x.netns for x in Leases(run).held()] == [name]
        me = tmp_path / "me.lock"
        fd = os.open(me, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            fresh = Leases(run).acquire(netns_name="nsbox-net-x", owner_lock=str(me), group="g")
        finally:
            os.close(fd)
        assert fresh.subnet == "10.213.0.0/24"  # the dead owner's, reclaimed
        assert [x.netns for x in Leases(run).held()] == ["nsbox-net-x"]
        assert name not in nsb_netns.list_named()
    finally:
        if named:
            nsb_netns.remove_named(name)
