"""BoxSpec: validation messages, ini defaults, marker merging, validate() after hooks."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_nsbox.errors import SpecError
from pytest_nsbox.model.spec import (
    CAPABILITIES,
    EXAMPLES,
    KEYS,
    SHAPING_KEYS,
    Bind,
    BoxSpec,
    merge_marker_kwargs,
)

MiB = 1024**2


def spec_error(kwargs: dict[str, Any], **options: Any) -> str:
    """The one line a user sees for these kwargs."""
    with pytest.raises(SpecError) as info:
        BoxSpec.from_kwargs(kwargs, **options)
    return str(info.value)


# -- keys and defaults ------------------------------------------------------------------------

def test_keys_are_the_contract_keys_plus_name() -> None:
    assert KEYS == (
        "image", "memory", "cpus", "pids", "network", "hostname", "env", "user", "binds",
        "timeout", "rate", "latency", "jitter", "loss", "privileged", "cap_add", "cap_drop",
        "seccomp", "isolate", "name")
    assert tuple(f.name for f in dataclasses.fields(BoxSpec)) == KEYS
    assert set(EXAMPLES) == set(KEYS)


def test_defaults() -> None:
    spec = BoxSpec.from_kwargs({})
    assert spec == BoxSpec()
    assert (spec.image, spec.network, spec.seccomp, spec.privileged, spec.isolate) == (
        "host", "none", True, False, False)
    assert [spec.memory, spec.cpus, spec.pids, spec.timeout, spec.name] == [None] * 5
    assert spec.env == {} and spec.binds == [] and spec.cap_add == [] == spec.cap_drop


def test_capabilities_are_the_41_linux_ones() -> None:
    assert len(CAPABILITIES) == 41
    assert CAPABILITIES["CHOWN"] == 0
    assert CAPABILITIES["NET_ADMIN"] == 12
    assert CAPABILITIES["SYS_ADMIN"] == 21
    assert CAPABILITIES["CHECKPOINT_RESTORE"] == 40
    assert sorted(CAPABILITIES.values()) == list(range(41))


def test_contract_example(tmp_path: Path) -> None:
    spec = BoxSpec.from_kwargs({
        "image": "busybox", "memory": "64M", "cpus": 0.5, "pids": 64, "network": "none",
        "hostname": "box", "env": {"A": "1"}, "binds": {str(tmp_path): "/data:ro"},
        "timeout": 30})
    assert spec == BoxSpec(
        image="busybox", memory=64 * MiB, cpus=0.5, pids=64, network="none", hostname="box",
        env={"A": "1"}, binds=[Bind(str(tmp_path), "/data", True)], timeout=30.0)


def test_every_key_parsed() -> None:
    spec = BoxSpec.from_kwargs({
        "rate": "1mbit", "latency": "50ms", "jitter": "10ms", "loss": "1%", "privileged": True,
        "cap_add": ["net_admin", "CAP_SYS_PTRACE"], "cap_drop": "NET_RAW", "seccomp": False,
        "isolate": True, "name": "db", "network": "private"})
    assert spec.rate == 1_000_000
    assert spec.latency == pytest.approx(0.05)
    assert spec.jitter == pytest.approx(0.01)
    assert spec.loss == 1.0
    assert spec.privileged is True and spec.seccomp is False and spec.isolate is True
    assert spec.cap_add == ["NET_ADMIN", "SYS_PTRACE"]
    assert spec.cap_drop == ["NET_RAW"]
    assert spec.name == "db" and spec.network == "private"


# -- good values, normalized ------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "expected"), [
    ("image", "busybox", "busybox"),
    ("image", "docker.io/library/alpine:3.19", "docker.io/library/alpine:3.19"),
    ("image", "oci:/tmp/img:latest", "oci:/tmp/img:latest"),
    ("memory", "64M", 64 * MiB),
    ("memory", 6 * MiB, 6 * MiB),  # moby's linuxMinMemory, the least allowed
    ("memory", None, None),
    ("cpus", 0.5, 0.5),
    ("cpus", 2, 2.0),
    ("cpus", "0.5", 0.5),
    ("pids", 64, 64),
    ("pids", "64", 64),
    ("network", "none", "none"),
    ("network", "private", "private"),
    ("network", "Host", "host"),
    ("hostname", "box", "box"),
    ("hostname", "db-1.test.local", "db-1.test.local"),
    ("hostname", "a" * 63, "a" * 63),
    ("hostname", "1box", "1box"),
    ("env", {"A": "1", "B": 2, "C": 0.5, "D": ""}, {"A": "1", "B": "2", "C": "0.5", "D": ""}),
    ("env", None, {}),
    ("timeout", 30, 30.0),
    ("timeout", "1.5s", 1.5),
    ("timeout", "2m", 120.0),
    ("timeout", None, None),
    ("rate", "10mbps", 80_000_000),
    ("rate", 1000, 1000),
    ("latency", "50ms", 0.05),
    ("latency", 0.05, 0.05),
    ("latency", 2, 2.0),  # a bare number is seconds
    ("loss", "0.5%", 0.5),
    ("loss", 1, 1.0),
    ("privileged", True, True),
    ("seccomp", False, False),
    ("isolate", True, True),
    ("cap_add", ["net_admin"], ["NET_ADMIN"]),
    ("cap_add", ["CAP_NET_ADMIN", "NET_ADMIN"], ["NET_ADMIN"]),
    ("cap_add", "SYS_PTRACE", ["SYS_PTRACE"]),
    ("cap_add", ("checkpoint_restore",), ["CHECKPOINT_RESTORE"]),
    ("cap_drop", ["ALL"], ["ALL"]),
    ("cap_drop", ["all", "NET_RAW"], ["ALL"]),
    ("cap_drop", None, []),
    ("name", "db", "db"),
    ("name", "web_1.v2-a", "web_1.v2-a"),
    ("name", None, None),
])
def test_good_value(key: str, value: object, expected: object) -> None:
    extra = {"network": "private"} if key in SHAPING_KEYS else {}
    spec = BoxSpec.from_kwargs({key: value, **extra})
    assert getattr(spec, key) == expected


# -- bad values: the exact line a user reads --------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"memory": "lots"}, "sandbox(memory='lots'): not a size; use e.g. '64M'"),
    ({"memory": 0}, "sandbox(memory=0): must be more than 0; use e.g. '64M'"),
    ({"memory": -1}, "sandbox(memory=-1): must not be negative; use e.g. '64M'"),
    ({"memory": True}, "sandbox(memory=True): not a size; use e.g. '64M'"),
    ({"cpus": 0}, "sandbox(cpus=0): must be more than 0; use e.g. 0.5"),
    ({"cpus": "half"}, "sandbox(cpus='half'): not a number of CPUs; use e.g. 0.5"),
    ({"cpus": True}, "sandbox(cpus=True): not a number of CPUs; use e.g. 0.5"),
    ({"pids": 0}, "sandbox(pids=0): must be at least 1; use e.g. 64"),
    ({"pids": 1.5}, "sandbox(pids=1.5): not a whole number of processes; use e.g. 64"),
    ({"pids": True}, "sandbox(pids=True): not a whole number of processes; use e.g. 64"),
    ({"pids": 2**30}, "sandbox(pids=1073741824): must be at most 4194304; use e.g. 64"),
    ({"network": "bridge"},
     "sandbox(network='bridge'): not a network mode; use e.g. 'none', 'private' or 'host'"),
    ({"network": None},
     "sandbox(network=None): not a network mode; use e.g. 'none', 'private' or 'host'"),
    ({"hostname": "my_box"},
     ("sandbox(hostname='my_box'): not a hostname (letters, digits and inner '-' in"
      " dot-separated labels, 64 characters at most); use e.g. 'box'")),
    ({"timeout": 0}, "sandbox(timeout=0): must be more than 0 seconds; use e.g. 30"),
    ({"timeout": "soon"}, "sandbox(timeout='soon'): not a duration; use e.g. 30"),
    ({"timeout": -1}, "sandbox(timeout=-1): must not be negative; use e.g. 30"),
    ({"rate": "fast"}, "sandbox(rate='fast'): not a rate; use e.g. '1mbit'"),
    ({"rate": 0}, "sandbox(rate=0): must be more than 0; use e.g. '1mbit'"),
    ({"latency": "-5ms"}, "sandbox(latency='-5ms'): must not be negative; use e.g. '50ms'"),
    ({"latency": "50 parsecs"}, "sandbox(latency='50 parsecs'): not a duration; use e.g. '50ms'"),
    ({"loss": "150%"}, "sandbox(loss='150%'): must be between 0% and 100%; use e.g. '1%'"),
    ({"privileged": 1}, "sandbox(privileged=1): must be True or False; use e.g. True"),
    ({"privileged": "yes"}, "sandbox(privileged='yes'): must be True or False; use e.g. True"),
    ({"seccomp": None}, "sandbox(seccomp=None): must be True or False; use e.g. True"),
    ({"isolate": "True"}, "sandbox(isolate='True'): must be True or False; use e.g. True"),
    ({"image": ""}, ("sandbox(image=''): not an image reference (a non-empty string without"
                     " spaces); use e.g. 'busybox'")),
    ({"image": "busy box"}, ("sandbox(image='busy box'): not an image reference (a non-empty"
                             " string without spaces); use e.g. 'busybox'")),
    ({"image": None}, ("sandbox(image=None): not an image reference (a non-empty string"
                       " without spaces); use e.g. 'busybox'")),
    ({"name": "-db"}, ("sandbox(name='-db'): not a box name (a letter or digit, then letters,"
                       " digits, '_', '.' or '-', 63 characters at most); use e.g. 'db'")),
    ({"env": ["A=1"]},
     "sandbox(env=['A=1']): not a mapping of variable names to values; use e.g. {'A': '1'}"),
    ({"env": {"A=B": "1"}}, ("sandbox(env={'A=B': '1'}): 'A=B' is not a variable name"
                             " (non-empty, no '=' or NUL); use e.g. {'A': '1'}")),
    ({"env": {"A": None}}, ("sandbox(env={'A': None}): the value of A must be a str, int or"
                            " float, not NoneType; use e.g. {'A': '1'}")),
    ({"env": {"A": True}}, ("sandbox(env={'A': True}): the value of A must be a str, int or"
                            " float, not bool; use e.g. {'A': '1'}")),
    ({"env": {"A": "x\0y"}},
     "sandbox(env={'A': 'x\\x00y'}): the value of A contains NUL; use e.g. {'A': '1'}"),
    ({"cap_add": ["NET_ADMN"]}, ("sandbox(cap_add=['NET_ADMN']): unknown capability 'NET_ADMN'"
                                 " (did you mean 'NET_ADMIN'?); use e.g. ['NET_ADMIN']")),
    ({"cap_add": ["FLY"]},
     "sandbox(cap_add=['FLY']): unknown capability 'FLY'; use e.g. ['NET_ADMIN']"),
    ({"cap_drop": {"NET_RAW": 1}},
     "sandbox(cap_drop={'NET_RAW': 1}): not a list of capability names; use e.g. ['NET_RAW']"),
    ({"cap_add": [12]}, ("sandbox(cap_add=[12]): capability names are strings, not int;"
                         " use e.g. ['NET_ADMIN']")),
])
def test_bad_value_message(kwargs: dict[str, Any], message: str) -> None:
    assert spec_error(kwargs) == message


@pytest.mark.parametrize("hostname", ["", "a" * 64, "box-", "-box", "a..b", "box.", "bo x",
                                      "x" * 30 + "." + "y" * 34])
def test_bad_hostnames(hostname: str) -> None:
    assert "not a hostname" in spec_error({"hostname": hostname})


def test_spec_error_carries_key_value_source() -> None:
    with pytest.raises(SpecError) as info:
        BoxSpec.from_kwargs({"memory": "lots"}, source="nsbox_factory")
    err = info.value
    assert (err.key, err.value, err.problem, err.example, err.source) == (
        "memory", "lots", "not a size", "'64M'", "nsbox_factory")
    assert str(err) == "nsbox_factory(memory='lots'): not a size; use e.g. '64M'"
    assert isinstance(err, ValueError)


# -- unknown keys -----------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "message"), [
    ("memroy", "sandbox(memroy='64M'): unknown key; use e.g. memory='64M'"),
    ("Memory", "sandbox(Memory='64M'): unknown key; use e.g. memory='64M'"),
    ("hostnme", "sandbox(hostnme='64M'): unknown key; use e.g. hostname='box'"),
    ("capadd", "sandbox(capadd='64M'): unknown key; use e.g. cap_add=['NET_ADMIN']"),
])
def test_unknown_key_suggests_the_closest(key: str, message: str) -> None:
    assert spec_error({key: "64M"}) == message


def test_unknown_key_without_a_close_one_lists_them_all() -> None:
    assert spec_error({"zzz": 1}) == (
        "sandbox(zzz=1): unknown key (known keys: image, memory, cpus, pids, network,"
        " hostname, env, user, binds, timeout, rate, latency, jitter, loss, privileged,"
        " cap_add, cap_drop, seccomp, isolate, name)")


def test_unknown_key_error_is_a_spec_error_with_the_key() -> None:
    with pytest.raises(SpecError) as info:
        BoxSpec.from_kwargs({"memroy": "64M"}, source="Box")
    assert (info.value.key, info.value.problem, info.value.source) == (
        "memroy", "unknown key", "Box")


# -- binds ------------------------------------------------------------------------------------

@pytest.fixture
def host_dir(tmp_path: Path) -> str:
    return str(tmp_path)


@pytest.mark.parametrize(("target", "expected"), [
    ("/data:ro", Bind("SRC", "/data", True)),
    ("/data:rw", Bind("SRC", "/data", False)),
    ("/data", Bind("SRC", "/data", False)),
    ("//data/./x/", Bind("SRC", "/data/x", False)),
])
def test_binds_mapping(host_dir: str, target: str, expected: Bind) -> None:
    spec = BoxSpec.from_kwargs({"binds": {host_dir: target}})
    assert spec.binds == [dataclasses.replace(expected, source=host_dir)]


def test_binds_other_forms(host_dir: str, tmp_path: Path) -> None:
    other = tmp_path / "file"
    other.write_text("x")
    spec = BoxSpec.from_kwargs({"binds": [f"{host_dir}:/a:ro", Bind(str(other), "/b", False)]})
    assert spec.binds == [Bind(host_dir, "/a", True), Bind(str(other), "/b", False)]
    assert BoxSpec.from_kwargs({"binds": f"{host_dir}:/a"}).binds == [Bind(host_dir, "/a")]
    assert BoxSpec.from_kwargs({"binds": None}).binds == []
    messy = "//" + host_dir.lstrip("/") + "/./sub/.."
    assert BoxSpec.from_kwargs({"binds": {messy: "/a"}}).binds == [Bind(host_dir, "/a")]


@pytest.mark.parametrize(("binds", "problem"), [
    ({"/no/such/dir": "/data"}, "bind source '/no/such/dir' does not exist on the host"),
    ({"relative/dir": "/data"}, "bind source 'relative/dir' is not an absolute path"),
    ({"HOST": "data:ro"}, "bind target 'data' is not an absolute path"),
    ({"HOST": "/data/../etc"}, "bind target '/data/../etc' must not contain '..'"),
    ({"HOST": "/"}, "bind target '/' must not be the box's root"),
    ({"HOST": "/./:ro"}, "bind target '/./' must not be the box's root"),
    ({"HOST": "/data:rx"}, "bind option 'rx' of 'HOST' is not 'ro' or 'rw'"),
    ({"HOST": 5}, "bind target of 'HOST' must be a string like '/data:ro'"),
    (["HOST"], "bind 'HOST' is not 'source:target[:ro]'"),
    ([5], "5 is not a bind"),
    (5, "not a mapping of host paths to box paths"),
    (["HOST:/a", "HOST:/a:ro"], "two binds onto '/a'"),
])
def test_bad_binds(host_dir: str, binds: object, problem: str) -> None:
    def put_host(v: object) -> object:
        if isinstance(v, str):
            return v.replace("HOST", host_dir)
        if isinstance(v, dict):
            return {put_host(k): put_host(x) for k, x in v.items()}
        if isinstance(v, list):
            return [put_host(x) for x in v]
        return v

    binds = put_host(binds)
    message = spec_error({"binds": binds})
    assert message == (f"sandbox(binds={binds!r}): {put_host(problem)};"
                       " use e.g. {'/host/dir': '/data:ro'}")


# -- rules between keys -----------------------------------------------------------------------

def test_jitter_needs_latency() -> None:
    assert spec_error({"jitter": "10ms"}) == (
        "sandbox(jitter='10ms'): jitter needs a latency; use e.g. latency='50ms', jitter='10ms'")
    assert BoxSpec.from_kwargs({"jitter": "10ms", "latency": "50ms", "network": "private"}
                               ).jitter == pytest.approx(0.01)


@pytest.mark.parametrize("key", ["rate", "latency", "loss"])
def test_no_shaping_on_the_host_network(key: str) -> None:
    value = {"rate": "1mbit", "latency": "50ms", "loss": "1%"}[key]
    assert spec_error({"network": "host", key: value}) == (
        f"sandbox({key}={value!r}): cannot shape the host's network; use e.g. network='private'")
    assert spec_error({key: value}) == (
        f"sandbox({key}={value!r}): shaping needs a private network (network='none' is "
        f"loopback only); use e.g. network='private'")
    BoxSpec.from_kwargs({"network": "private", key: value})


def test_capability_in_both_lists() -> None:
    assert spec_error({"cap_add": ["net_admin"], "cap_drop": ["CAP_NET_ADMIN"]}) == (
        "sandbox(cap_add=['net_admin']): 'NET_ADMIN' is also in cap_drop"
        " (keep it in one of them)")
    spec = BoxSpec.from_kwargs({"cap_drop": ["ALL"], "cap_add": ["NET_BIND_SERVICE"]})
    assert (spec.cap_drop, spec.cap_add) == (["ALL"], ["NET_BIND_SERVICE"])


# -- ini defaults -----------------------------------------------------------------------------

def test_defaults_apply_under_kwargs() -> None:
    spec = BoxSpec.from_kwargs({"memory": "128M"},
                               defaults={"memory": "64M", "image": "busybox", "pids": "32"})
    assert (spec.memory, spec.image, spec.pids) == (128 * MiB, "busybox", 32)


def test_explicit_none_lifts_a_default() -> None:
    spec = BoxSpec.from_kwargs({"memory": None}, defaults={"memory": "64M"})
    assert spec.memory is None


def test_empty_defaults_are_not_set() -> None:
    spec = BoxSpec.from_kwargs({}, defaults={"memory": "", "hostname": "  ", "timeout": None})
    assert spec == BoxSpec()


def test_bad_default_names_the_ini_option() -> None:
    assert spec_error({}, defaults={"memory": "lots"}) == (
        "ini(nsbox_memory='lots'): not a size; use e.g. '64M'")
    assert spec_error({}, defaults={"cpus": "x"}, defaults_source="pytest.ini") == (
        "pytest.ini(nsbox_cpus='x'): not a number of CPUs; use e.g. 0.5")
    assert spec_error({}, defaults={"memroy": "1G"}) == (
        "ini(nsbox_memroy='1G'): unknown key; use e.g. memory='64M'")


def test_bad_default_is_reported_even_when_kwargs_override_it() -> None:
    assert spec_error({"memory": "1G"}, defaults={"memory": "lots"}).startswith("ini(")


def test_rule_between_keys_names_where_each_came_from() -> None:
    assert spec_error({"rate": "1mbit"}, defaults={"network": "host"}) == (
        "sandbox(rate='1mbit'): cannot shape the host's network; use e.g. network='private'")
    assert spec_error({"network": "host"}, defaults={"rate": "1mbit"}) == (
        "ini(nsbox_rate='1mbit'): cannot shape the host's network; use e.g. network='private'")


def test_ini_text_forms(host_dir: str) -> None:
    spec = BoxSpec.from_kwargs({}, defaults={
        "privileged": "yes", "seccomp": "off", "isolate": "1", "cpus": "0.5", "timeout": "30",
        "cap_add": "net_admin, sys_ptrace", "cap_drop": "NET_RAW CHOWN",
        "env": "A=1\nB=x=y\n", "binds": f"{host_dir}:/a:ro\n{host_dir}:/b",
    })
    assert (spec.privileged, spec.seccomp, spec.isolate) == (True, False, True)
    assert (spec.cpus, spec.timeout) == (0.5, 30.0)
    assert spec.cap_add == ["NET_ADMIN", "SYS_PTRACE"]
    assert spec.cap_drop == ["NET_RAW", "CHOWN"]
    assert spec.env == {"A": "1", "B": "x=y"}
    assert spec.binds == [Bind(host_dir, "/a", True), Bind(host_dir, "/b", False)]
    assert BoxSpec.from_kwargs({}, defaults={"env": ["A=1", "B=2"]}).env == {"A": "1", "B": "2"}
    assert spec_error({}, defaults={"privileged": "maybe"}) == (
        "ini(nsbox_privileged='maybe'): must be True or False; use e.g. True")


# -- merging markers --------------------------------------------------------------------------

def test_merge_closest_marker_wins_key_by_key() -> None:
    function = {"memory": "128M"}
    klass = {"memory": "64M", "cpus": 1}
    module = {"memory": "32M", "cpus": 2, "pids": 10}
    assert merge_marker_kwargs([function, klass, module]) == {
        "memory": "128M", "cpus": 1, "pids": 10}


def test_merge_does_not_deep_merge_env_or_binds() -> None:
    merged = merge_marker_kwargs([{"env": {"A": "1"}}, {"env": {"B": "2"}, "binds": {"/x": "/y"}}])
    assert merged == {"env": {"A": "1"}, "binds": {"/x": "/y"}}


def test_merge_keeps_an_explicit_none() -> None:
    assert merge_marker_kwargs([{"memory": None}, {"memory": "64M"}]) == {"memory": None}
    assert merge_marker_kwargs([]) == {}


def test_merge_does_not_change_its_inputs() -> None:
    closest, farther = {"a": 1}, {"a": 2, "b": 3}
    merge_marker_kwargs([closest, farther])
    assert closest == {"a": 1} and farther == {"a": 2, "b": 3}


# -- validate() after a hook, to_kwargs(), describe() -----------------------------------------

def test_validate_normalizes_what_a_hook_set(host_dir: str) -> None:
    spec = BoxSpec.from_kwargs({"image": "busybox"})
    spec.memory = "128M"  # type: ignore[assignment]
    spec.cpus = "0.5"  # type: ignore[assignment]
    spec.cap_add = ["net_admin"]
    spec.binds = {host_dir: "/data:ro"}  # type: ignore[assignment]
    spec.hostname = "hooked"
    checked = spec.validate()
    assert checked.memory == 128 * MiB
    assert checked.cpus == 0.5
    assert checked.cap_add == ["NET_ADMIN"]
    assert checked.binds == [Bind(host_dir, "/data", True)]
    assert checked.hostname == "hooked" and checked.image == "busybox"


def test_validate_reports_what_a_hook_broke() -> None:
    spec = BoxSpec()
    spec.memory = "lots"  # type: ignore[assignment]
    with pytest.raises(SpecError) as info:
        spec.validate()
    assert str(info.value) == "spec(memory='lots'): not a size; use e.g. '64M'"
    with pytest.raises(SpecError, match=r"^pytest_nsbox_box_spec\(memory='lots'\)"):
        spec.validate(source="pytest_nsbox_box_spec")


def test_a_hook_cannot_add_a_misspelt_attribute() -> None:
    spec = BoxSpec()
    with pytest.raises(AttributeError):
        spec.memroy = "64M"  # type: ignore[attr-defined]


def full_spec(host_dir: str) -> BoxSpec:
    return BoxSpec.from_kwargs({
        "image": "busybox", "memory": "64M", "cpus": 0.5, "pids": 64, "network": "private",
        "hostname": "box", "env": {"A": "1", "B": 2}, "user": "1000:1000",
        "binds": {host_dir: "/data:ro"},
        "timeout": "1m", "rate": "1mbit", "latency": "50ms", "jitter": "10ms", "loss": "1%",
        "privileged": True, "cap_add": ["NET_ADMIN"], "cap_drop": ["ALL"], "seccomp": False,
        "isolate": True, "name": "db"})


def test_validate_is_idempotent(host_dir: str) -> None:
    spec = full_spec(host_dir)
    assert spec.validate() == spec
    assert spec.validate().validate() == spec
    assert BoxSpec().validate() == BoxSpec()


def test_to_kwargs_round_trips(host_dir: str) -> None:
    spec = full_spec(host_dir)
    kwargs = spec.to_kwargs()
    assert set(kwargs) == set(KEYS)
    assert kwargs["binds"] == {host_dir: "/data:ro"}
    assert kwargs["memory"] == 64 * MiB
    assert BoxSpec.from_kwargs(kwargs) == spec


def test_to_kwargs_only_non_defaults(host_dir: str) -> None:
    assert BoxSpec().to_kwargs() == {}
    assert BoxSpec.from_kwargs({"memory": "64M", "network": "none"}).to_kwargs() == {
        "memory": 64 * MiB}
    spec = BoxSpec.from_kwargs({"binds": [f"{host_dir}:/a", f"{host_dir}:/b:ro"]})
    assert BoxSpec.from_kwargs(spec.to_kwargs()) == spec


def test_to_kwargs_copies_containers() -> None:
    spec = BoxSpec.from_kwargs({"env": {"A": "1"}})
    spec.to_kwargs()["env"]["B"] = "2"
    assert spec.env == {"A": "1"}


def test_describe() -> None:
    spec = BoxSpec.from_kwargs({"image": "busybox", "memory": "64M", "cpus": 0.5, "pids": 64})
    assert spec.describe() == "image=busybox memory=64.0 MiB cpus=0.5 pids=64 network=none"
    assert BoxSpec().describe() == "image=host network=none"


def test_describe_everything_but_env_values(host_dir: str) -> None:
    text = full_spec(host_dir).describe()
    assert text == (
        "image=busybox memory=64.0 MiB cpus=0.5 pids=64 network=private name=db hostname=box"
        f" env=A,B user=1000:1000 binds={host_dir}:/data:ro timeout=60s rate=1mbit latency=50ms"
        " jitter=10ms loss=1% privileged cap_add=NET_ADMIN cap_drop=ALL seccomp=off isolate")


def test_spec_does_not_import_pytest() -> None:
    from pytest_nsbox.model import spec as spec_module

    source = Path(spec_module.__file__).read_text(encoding="utf-8")
    assert "import pytest\n" not in source and "from pytest " not in source


# -- nothing but SpecError ever escapes -------------------------------------------------------

ANYTHING = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
              st.sampled_from(["64M", "1mbit", "50ms", "1%", "/", "/tmp", "/tmp:/x:ro",
                               "NET_ADMIN", "ALL", "none", "host", "A=1"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into a failure
@given(st.dictionaries(st.sampled_from([*KEYS, "memroy", ""]), ANYTHING, max_size=4),
       st.dictionaries(st.sampled_from(KEYS), ANYTHING, max_size=2))
def test_any_input_gives_a_spec_or_a_spec_error(kwargs: dict[str, Any],
                                                 defaults: dict[str, Any]) -> None:
    try:
        spec = BoxSpec.from_kwargs(kwargs, defaults=defaults)
    except SpecError as exc:
        assert str(exc).startswith(("sandbox(", "ini("))
    else:
        assert spec.validate() == spec
        assert BoxSpec.from_kwargs(spec.to_kwargs()) == spec
