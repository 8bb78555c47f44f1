"""caps: Docker's rules for cap_add/cap_drop, and a process that really holds only its set.

The real tests run a child Python (``sys.executable -c``) that applies a set and then execs
``cat /proc/self/status``: what the kernel reports after ``execve`` is what a box's command
gets. Expectations are the requested set intersected with what this test process has in
its own bounding set (a host or outer container may already withhold some, such as
CAP_SYS_RESOURCE).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_nsbox.model import spec
from pytest_nsbox.kernel import caps

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capabilities)")

NOBODY = 65534


# -- the tables -------------------------------------------------------------------------------

def test_table_is_the_specs() -> None:
    assert caps.CAPABILITIES == spec.CAPABILITIES
    assert len(caps.CAPABILITIES) == 41
    assert caps.CHOWN == 0 and caps.CHECKPOINT_RESTORE == 40
    for name, number in caps.CAPABILITIES.items():
        assert getattr(caps, name) == number


def test_docker_default() -> None:
    assert caps.names(caps.DOCKER_DEFAULT) == [
        "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
        "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP",
    ]
    # What `docker run --rm busybox grep CapEff /proc/self/status` prints.
    assert caps.mask(caps.DOCKER_DEFAULT) == 0xA80425FB


def test_names_and_mask() -> None:
    assert caps.names([caps.SYS_ADMIN, caps.CHOWN, caps.CHOWN]) == ["CHOWN", "SYS_ADMIN"]
    assert caps.names([63]) == ["63"]
    assert caps.mask([]) == 0
    assert caps.mask([0, 40]) == 1 | 1 << 40


# -- resolve: Docker's TweakCapabilities ------------------------------------------------------

ALL = sorted(caps.CAPABILITIES.values())
DEFAULT = sorted(caps.DOCKER_DEFAULT)


def without(*names: str) -> list[int]:
    return sorted(set(DEFAULT) - {caps.CAPABILITIES[n] for n in names})


def plus(*names: str) -> list[int]:
    return sorted(set(DEFAULT) | {caps.CAPABILITIES[n] for n in names})


@pytest.mark.parametrize(("add", "drop", "privileged", "expected"), [
    ([], [], False, DEFAULT),
    (["NET_ADMIN"], [], False, plus("NET_ADMIN")),
    ([], ["NET_RAW"], False, without("NET_RAW")),
    (["NET_ADMIN", "SYS_TIME"], ["NET_RAW", "MKNOD"], False,
     sorted(set(plus("NET_ADMIN", "SYS_TIME")) - {caps.NET_RAW, caps.MKNOD})),
    ([], ["SYS_ADMIN"], False, DEFAULT),  # dropping what is not there is no error
    (["CHOWN"], [], False, DEFAULT),  # adding what is there neither
    (["NET_ADMIN"], ["NET_ADMIN"], False, plus("NET_ADMIN")),  # add wins, as in Docker
    (["ALL"], [], False, ALL),
    (["ALL"], ["SYS_ADMIN", "NET_ADMIN"], False,
     sorted(set(ALL) - {caps.SYS_ADMIN, caps.NET_ADMIN})),
    ([], ["ALL"], False, []),
    (["NET_BIND_SERVICE", "SYS_ADMIN"], ["ALL"], False, [caps.NET_BIND_SERVICE, caps.SYS_ADMIN]),
    (["ALL"], ["ALL"], False, ALL),  # "ALL" in cap_add is looked at first
    ([], [], True, ALL),
    ([], ["ALL"], True, ALL),  # privileged beats everything
])
def test_resolve(add: list[str], drop: list[str], privileged: bool, expected: list[int]) -> None:
    assert caps.resolve(add, drop, privileged) == expected


def test_resolve_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown capability 'CAP_CHOWN'"):
        caps.resolve(["CAP_CHOWN"], [], False)
    with pytest.raises(ValueError, match="unknown capability 'net_raw'"):
        caps.resolve([], ["net_raw"], False)


def test_resolve_takes_what_spec_makes() -> None:
    box = spec.BoxSpec.from_kwargs({"cap_add": ["net_admin"], "cap_drop": "CAP_NET_RAW"})
    assert caps.resolve(box.cap_add, box.cap_drop, box.privileged) == sorted(
        set(plus("NET_ADMIN")) - {caps.NET_RAW})


# -- last_cap ---------------------------------------------------------------------------------

def test_last_cap_is_the_kernels() -> None:
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        assert caps.last_cap() == int(f.read())


def test_last_cap_without_proc_asks_the_kernel(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    expected = caps.last_cap()
    monkeypatch.setattr(caps, "_CAP_LAST_CAP", str(tmp_path / "no-proc-here"))
    assert caps.last_cap() == expected


# -- for real: a child applies a set, then execs cat /proc/self/status ------------------------

CHILD = """
import json, os, sys
from pytest_nsbox.kernel import caps
args = json.loads(sys.argv[1])
keep, last = args["keep"], caps.last_cap()
if args["user"] is None:
    caps.apply(keep, last)
else:  # the order the init's fork path takes for run(user=...)
    caps.drop_bounding(keep, last)
    os.setgroups([args["user"]])
    os.setgid(args["user"])
    os.setuid(args["user"])
    caps.limit(keep)
os.execv("/bin/cat", ["cat", "/proc/self/status"])
"""


def status_caps(text: str) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in text.splitlines() if line.startswith("Cap"))
    return {key: int(value, 16) for key, value in fields.items()}


def own_bounding() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return status_caps(f.read())["CapBnd"]


def run_child(keep: list[int], user: int | None = None) -> dict[str, int]:
    args = json.dumps({"keep": keep, "user": user})
    proc = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return status_caps(proc.stdout)


def show(bits: int) -> list[str]:
    return caps.names(n for n in range(64) if bits >> n & 1)


@needs_root
@pytest.mark.parametrize("keep", [
    pytest.param(list(caps.DOCKER_DEFAULT), id="default"),
    pytest.param(caps.resolve(["NET_ADMIN"], ["NET_RAW"], False), id="+NET_ADMIN-NET_RAW"),
    pytest.param(caps.resolve(["SYS_ADMIN", "SYS_RESOURCE"], ["ALL"], False), id="only-two"),
    pytest.param(caps.resolve([], [], True), id="privileged"),
    pytest.param(caps.resolve([], ["ALL"], False), id="none"),
])
def test_root_command_holds_exactly_its_set(keep: list[int]) -> None:
    expected = caps.mask(keep) & own_bounding()
    got = run_child(keep)
    assert {k: show(v) for k, v in got.items()} == {
        "CapInh": [], "CapPrm": show(expected), "CapEff": show(expected),
        "CapBnd": show(expected), "CapAmb": [],
    }


@needs_root
def test_privileged_keeps_all_this_process_has() -> None:
    got = run_child(caps.resolve([], [], True))
    assert got["CapBnd"] == got["CapEff"] == own_bounding()


@needs_root
@pytest.mark.parametrize("keep", [
    pytest.param(list(caps.DOCKER_DEFAULT), id="default"),
    # setuid needs CAP_SETUID; drop_bounding leaves the effective set alone until limit().
    pytest.param(caps.resolve([], ["SETUID", "SETGID"], False), id="without-SETUID"),
])
def test_other_user_holds_nothing_and_is_bounded(keep: list[int]) -> None:
    got = run_child(keep, user=NOBODY)
    expected = caps.mask(keep) & own_bounding()
    assert show(got["CapBnd"]) == show(expected)
    assert got["CapEff"] == got["CapPrm"] == got["CapInh"] == got["CapAmb"] == 0


@needs_root
def test_a_dropped_capability_is_refused(tmp_path: Path) -> None:
    """Not only the bits: without CAP_CHOWN, chown to another user fails."""
    script = """
import os, sys
from pytest_nsbox.kernel import caps
path = sys.argv[1]
caps.apply(caps.resolve([], ["CHOWN"], False), caps.last_cap())
try:
    os.chown(path, 1234, 1234)
except PermissionError:
    sys.exit(0)
sys.exit("chown succeeded without CAP_CHOWN")
"""
    path = tmp_path / "file"
    path.touch()
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert path.stat().st_uid == 0


INIT_PATTERN = """
import json, os, sys
from pytest_nsbox.kernel import caps, libc
keep = json.loads(sys.argv[1])
# The box's init: bounding set = keep, but it holds on to what run(user=...) needs.
caps.drop_bounding(keep, caps.last_cap())
caps.limit(set(keep) | {caps.SETUID, caps.SETGID})
libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
pid = os.fork()
if pid == 0:  # a command as root: execve recomputes permitted from the bounding set
    os.execv("/bin/cat", ["cat", "/proc/self/status"])
os.waitpid(pid, 0)
print("--")
sys.stdout.flush()
pid = os.fork()
if pid == 0:  # a command as another user, though SETUID/SETGID are not in keep
    os.setgroups([65534]); os.setgid(65534); os.setuid(65534)
    caps.limit(keep)
    os.execv("/bin/cat", ["cat", "/proc/self/status"])
os.waitpid(pid, 0)
"""


@needs_root
def test_an_init_may_keep_setuid_for_its_children() -> None:
    """The init's own effective set may exceed ``keep``: its commands still get exactly it."""
    keep = caps.resolve([], ["SETUID", "SETGID"], False)
    proc = subprocess.run([sys.executable, "-c", INIT_PATTERN, json.dumps(keep)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    as_root, as_nobody = (status_caps(part) for part in proc.stdout.split("--\n"))
    expected = caps.mask(keep) & own_bounding()
    assert as_root == {"CapInh": 0, "CapPrm": expected, "CapEff": expected,
                       "CapBnd": expected, "CapAmb": 0}
    assert as_nobody == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": expected,
                         "CapAmb": 0}
