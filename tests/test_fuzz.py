"""Fuzzed input to run() and the file methods: a result or a clear error, never a leak or hang."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_nsbox import Box, NsboxError, RunResult

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
CMDS = st.one_of(TEXT, st.lists(TEXT, min_size=0, max_size=4),
                 st.sampled_from(["..", "/", "../../bin/sh", "echo $((1/0))", "exit 300"]))
ENVS = st.one_of(st.none(), st.dictionaries(TEXT, TEXT, max_size=4),
                 st.just({"BIG": "x" * (2 << 20)}))
PATHS = st.one_of(TEXT, st.sampled_from(["..", "../..", "/../../etc/passwd", "a/../../b",
                                         "/proc/1/root/etc/passwd", "/dev/null/x", ""]))


@pytest.fixture(scope="module")
def box():
    with Box(image="busybox", memory="64M", pids=64) as b:
        yield b


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmd=CMDS, env=ENVS, cwd=st.one_of(st.none(), PATHS),
       data=st.one_of(st.none(), st.binary(max_size=2000), TEXT),
       user=st.one_of(st.none(), st.sampled_from(["root", "nobody", "0:0", "ghost", "1:x", ""])))
def test_run_gives_a_result_or_a_clear_error(box, cmd, env, cwd, data, user):
    try:
        result = box.run(cmd, env=env, cwd=cwd, input=data, user=user or None, timeout=10)
    except NsboxError as exc:
        assert str(exc)
    else:
        assert isinstance(result, RunResult) and not result.timed_out
    assert box.run(["true"]).returncode == 0  # the box is still fine


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, data=st.binary(max_size=100))
def test_file_methods_stay_inside_the_box(box, path, data):
    with open("/etc/passwd", "rb") as f:
        host_passwd = f.read()
    for call in (lambda: box.read_bytes(path), lambda: box.exists(path),
                 lambda: box.listdir(path), lambda: box.write_bytes(path, data)):
        try:
            call()
        except (OSError, NsboxError):
            pass
    # Whatever the path, a write lands in the box (its /etc/passwd may be gone), never here.
    with open("/etc/passwd", "rb") as f:
        assert f.read() == host_passwd
    assert box.run(["true"]).returncode == 0
