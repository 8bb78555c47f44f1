"""leases: one subnet per live network on the machine, stale leases of dead owners reclaimed."""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_nsbox.network.errors import NetworkError
from pytest_nsbox.network.sweep import collect_garbage
from pytest_nsbox.network.leases import POOL, Leases, owner_alive
from pytest_nsbox.state import StateDirs


@pytest.fixture
def run(tmp_path: Path) -> str:
    return str(tmp_path / "run")


@pytest.fixture
def live_owner(tmp_path: Path) -> Iterator[str]:
    """An owner lock held (flock'd) as a live pytest process holds its own."""
    path = str(tmp_path / "owner-live.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield path
    os.close(fd)


@pytest.fixture
def dead_owner(tmp_path: Path) -> str:
    """An owner lock nobody holds: its process died."""
    path = tmp_path / "owner-dead.lock"
    path.touch()
    return str(path)


def test_owner_alive_asks_the_flock(live_owner: str, dead_owner: str, tmp_path: Path) -> None:
    assert owner_alive(live_owner)
    assert not owner_alive(dead_owner)
    assert not owner_alive(str(tmp_path / "gone.lock"))
    assert owner_alive(live_owner)  # asking did not take it away


def test_leases_are_distinct_24s_of_the_pool(run: str, live_owner: str) -> None:
    leases = Leases(run)
    a = leases.acquire(netns_name="nsbox-net-a", owner_lock=live_owner, group="t::a")
    b = leases.acquire(netns_name="nsbox-net-b", owner_lock=live_owner, group="t::b")
    assert a.subnet != b.subnet
    for lease in (a, b):
        assert lease.network.prefixlen == 24 and lease.network.subnet_of(POOL)
        assert lease.owner_pid == os.getpid()
    assert a.address(1) == str(a.network.network_address + 1)
    with pytest.raises(NetworkError, match="no host number 255"):
        a.address(255)
    record = json.loads(Path(a.path).read_text())
    assert record["netns"] == "nsbox-net-a" and record["owner_lock"] == live_owner
    assert record["group"] == "t::a"
    assert {x.subnet for x in leases.held()} == {a.subnet, b.subnet}


def test_a_released_subnet_is_free_again(run: str, live_owner: str) -> None:
    leases = Leases(run)
    a = leases.acquire(netns_name="nsbox-net-a", owner_lock=live_owner, group="g")
    leases.release(a)
    leases.release(a)  # twice is fine
    assert leases.held() == []
    again = leases.acquire(netns_name="nsbox-net-c", owner_lock=live_owner, group="g")
    assert again.subnet == a.subnet


def test_a_dead_owners_lease_is_reclaimed(run: str, live_owner: str, dead_owner: str) -> None:
    leases = Leases(run)
    stale = leases.acquire(netns_name="nsbox-net-gone", owner_lock=dead_owner, group="old")
    fresh = leases.acquire(netns_name="nsbox-net-new", owner_lock=live_owner, group="new")
    assert fresh.subnet == stale.subnet
    assert [x.netns for x in leases.held()] == ["nsbox-net-new"]


def test_a_live_owners_lease_is_kept(run: str, live_owner: str, tmp_path: Path) -> None:
    other = Leases(run)
    kept = other.acquire(netns_name="nsbox-net-kept", owner_lock=live_owner, group="g")
    path = str(tmp_path / "me.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        mine = Leases(run).acquire(netns_name="nsbox-net-mine", owner_lock=path, group="g")
    finally:
        os.close(fd)
    assert mine.subnet != kept.subnet


def test_the_pool_runs_out_with_a_clear_error(run: str, live_owner: str) -> None:
    leases = Leases(run, pool=ipaddress.IPv4Network("10.213.0.0/23"))
    leases.acquire(netns_name="n1", owner_lock=live_owner, group="g")
    leases.acquire(netns_name="n2", owner_lock=live_owner, group="g")
    with pytest.raises(NetworkError, match=r"all 2 subnets of 10.213.0.0/23 are leased"):
        leases.acquire(netns_name="n3", owner_lock=live_owner, group="g")


def test_concurrent_acquisitions_never_share_a_subnet(run: str, live_owner: str) -> None:
    got: list[str] = []
    lock = threading.Lock()

    def take(i: int) -> None:
        for j in range(5):
            lease = Leases(run).acquire(netns_name=f"n{i}-{j}", owner_lock=live_owner,
                                        group=f"g{i}")
            with lock:
                got.append(lease.subnet)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40 and len(set(got)) == 40


def test_collect_garbage_removes_dead_owners_leases_only(run: str, live_owner: str,
                                                         dead_owner: str) -> None:
    leases = Leases(run)
    leases.acquire(netns_name="nsbox-net-live", owner_lock=live_owner, group="g")
    dead = leases.acquire(netns_name="nsbox-net-dead", owner_lock=dead_owner, group="crashed")
    Path(leases.records, "junk.json").write_text("{not json")
    Path(leases.records, "half.json.tmp").write_text("{")
    dirs = StateDirs(store=run + "-store", run=run)
    would = collect_garbage(dirs, dry_run=True)
    assert would[0] == f"would remove lease of {dead.describe()}"
    assert len(leases.held()) == 2 and collect_garbage(dirs, dry_run=True) == would
    removed = collect_garbage(dirs)
    assert removed[0] == f"removed lease of {dead.describe()}"
    assert "nsbox-net-dead" in removed[0] and "crashed" in removed[0]
    assert f"removed unreadable lease record {leases.records}/junk.json" in removed
    assert f"removed partial lease record {leases.records}/half.json.tmp" in removed
    assert [x.netns for x in leases.held()] == ["nsbox-net-live"]
    assert collect_garbage(dirs) == []


def test_collect_garbage_with_no_state_at_all(tmp_path: Path) -> None:
    assert collect_garbage(StateDirs(store=str(tmp_path / "s"), run=str(tmp_path / "r"))) == []
