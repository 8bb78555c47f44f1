"""shaping: the qdisc plans built from a spec, and how a missing qdisc kind is reported."""
from __future__ import annotations

import errno

import pytest

from pytest_nsbox.network import shaping
from pytest_nsbox.network.errors import NetworkError
from pytest_nsbox.model.spec import BoxSpec


def spec(**keys: object) -> BoxSpec:
    return BoxSpec.from_kwargs({"network": "private", **keys})


class FakeNetlinkError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code


def test_tbf_params_for_one_megabit() -> None:
    params = shaping.tbf_params(1_000_000)
    assert params["rate"] == 125_000  # bytes per second
    assert params["burst"] >= 2 * shaping.FRAME
    assert params["limit"] >= params["burst"] + 2 * shaping.FRAME


def test_tbf_bucket_grows_with_the_rate() -> None:
    fast = shaping.tbf_params(10**9)
    assert fast["burst"] == int(125_000_000 * shaping.BURST_SECONDS)
    assert fast["limit"] == fast["burst"] + int(125_000_000 * shaping.QUEUE_SECONDS)


@pytest.mark.parametrize(("rate", "words"), [(999, "below"), (40 * 10**9, "above")])
def test_tbf_refuses_rates_it_cannot_represent(rate: int, words: str) -> None:
    with pytest.raises(NetworkError, match=words):
        shaping.tbf_params(rate)


def test_netem_params_in_microseconds_and_percent() -> None:
    params = shaping.netem_params(0.05, 0.01, 1.5)
    assert params == {"delay": 50_000, "jitter": 10_000, "loss": params["loss"],
                      "limit": shaping.NETEM_LIMIT}
    assert shaping.netem_params(None, None, 3.0)["delay"] == 0
    assert "jitter" not in shaping.netem_params(None, None, 3.0)
    with pytest.raises(NetworkError, match="latency 300 s"):
        shaping.netem_params(300.0, None, None)


@pytest.mark.parametrize(("latency", "jitter", "loss", "delay_us", "jitter_us", "loss_u32"), [
    ("1.005s", "1.001s", "33.3%", 1_005_000, 1_001_000, 1430224109),
    ("50ms", "10ms", "1%", 50_000, 10_000, 42949673),
    ("2.3ms", "0.0015ms", "0.2%", 2_300, 1, 8589935),
    ("0.3s", None, "50%", 300_000, 0, 2147483648),
])
def test_netem_gets_tcs_exact_numbers_through_pyroute2(
        latency: str, jitter: str | None, loss: str, delay_us: int, jitter_us: int,
        loss_u32: int) -> None:
    """iproute2 tc: ``get_time`` truncates a time to whole microseconds, q_netem.c
    ``set_percent`` makes a loss ``rint(per * UINT32_MAX)``. pyroute2's netem encoder
    (``sched_netem.get_parameters``: ``percent2u32``, ``time2tick``) must end with exactly
    those numbers, where floats give 1004999 us and 42949672."""
    from pyroute2.netlink.rtnl.tcmsg import common, sched_netem

    keys = {"latency": latency, "loss": loss}
    if jitter is not None:
        keys["jitter"] = jitter
    (netem,) = shaping.box_side(spec(**keys))
    assert netem.params["delay"] == delay_us
    assert netem.params.get("jitter", 0) == jitter_us
    opts = sched_netem.get_parameters(netem.params)
    assert opts["loss"] == loss_u32
    assert opts["delay"] == common.time2tick(delay_us)
    assert f"loss {loss_u32 * 100 / (2**32 - 1):g}" in shaping.describe(netem)


def test_no_shaping_keys_no_qdiscs() -> None:
    assert shaping.box_side(spec()) == []
    assert shaping.switch_side(spec()) == []


def test_rate_shapes_both_ends_of_the_link() -> None:
    (box,) = shaping.box_side(spec(rate="1mbit"))
    (switch,) = shaping.switch_side(spec(rate="1mbit"))
    assert box.kind == switch.kind == "tbf"
    assert box.parent == switch.parent == shaping.ROOT
    assert box.params == switch.params == shaping.tbf_params(1_000_000)
    assert box.keys == "rate='1mbit'"


def test_netem_shapes_what_the_box_sends_only() -> None:
    (netem,) = shaping.box_side(spec(latency="50ms", jitter="10ms", loss="1%"))
    assert netem.kind == "netem" and netem.parent == shaping.ROOT
    assert netem.params["delay"] == 50_000 and netem.params["jitter"] == 10_000
    assert netem.keys == "latency='50ms', jitter='10ms', loss='1%'"
    assert shaping.switch_side(spec(latency="50ms")) == []


def test_rate_and_latency_stack_tbf_under_netem() -> None:
    netem, tbf = shaping.box_side(spec(rate="2mbit", latency="20ms"))
    assert (netem.kind, netem.handle, netem.parent) == ("netem", 0x10000, shaping.ROOT)
    assert (tbf.kind, tbf.parent) == ("tbf", 0x10001)  # netem's class 1:1
    assert tbf.handle not in (0, netem.handle)
    assert "parent 1:1" in shaping.describe(tbf) and "root" in shaping.describe(netem)


def test_a_missing_qdisc_kind_is_recognised() -> None:
    netem = shaping.Qdisc("netem", 0x10000)
    child = shaping.Qdisc("tbf", 0x100000, 0x10001)
    unknown = FakeNetlinkError(errno.ENOENT, "Specified qdisc kind is unknown")
    plain = FakeNetlinkError(errno.ENOENT, "No such file or directory")
    assert shaping.missing_kind(unknown, netem) and shaping.missing_kind(unknown, child)
    assert shaping.missing_kind(plain, netem)  # root qdisc: the device exists
    assert not shaping.missing_kind(plain, child)  # a child: its parent may be missing
    assert not shaping.missing_kind(FakeNetlinkError(errno.EINVAL, "Invalid"), netem)


def test_the_missing_module_message_names_it_and_the_keys() -> None:
    (netem,) = shaping.box_side(spec(latency="50ms"))
    text = shaping.missing_message(netem, "box 'db': shaping what it sends (eth0)")
    assert text.startswith("box 'db': shaping what it sends (eth0): latency='50ms' needs ")
    assert "kernel module sch_netem is missing" in text
    assert "CONFIG_NET_SCH_NETEM" in text and "modprobe sch_netem" in text


class RecordingIPRoute:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.fail = fail

    def tc(self, command: str, kind: str, index: int, handle: int, **kwargs: object) -> None:
        self.calls.append((command, kind, index, handle, kwargs))
        if self.fail is not None:
            raise self.fail


def test_apply_sends_each_qdisc_in_order() -> None:
    ipr = RecordingIPRoute()
    shaping.apply(ipr, 7, shaping.box_side(spec(rate="2mbit", latency="20ms")), "box 'a'")
    assert [c[1] for c in ipr.calls] == ["netem", "tbf"]
    assert "parent" not in ipr.calls[0][4] and ipr.calls[1][4]["parent"] == 0x10001
    assert all(c[2] == 7 for c in ipr.calls)


def test_apply_turns_netlink_errors_into_network_errors() -> None:
    from pytest_nsbox.network.netlink import netlink_error

    error = netlink_error()(errno.ENOENT, "Specified qdisc kind is unknown")
    with pytest.raises(NetworkError, match="sch_netem"):
        shaping.apply(RecordingIPRoute(error), 7, shaping.box_side(spec(latency="5ms")), "x")
    error = netlink_error()(errno.EINVAL, "Invalid argument")
    with pytest.raises(NetworkError, match=r"x: adding qdisc tbf root .* netlink error 22"):
        shaping.apply(RecordingIPRoute(error), 7, shaping.box_side(spec(rate="1mbit")), "x")
