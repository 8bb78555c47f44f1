"""``kernel.proc.choose_oom_scores``: the ``oom_score_adj`` of a box's init (or an isolated
test's PID 1) and of its commands, chosen in a forked child so this process keeps its own.

Docker protects its own processes below a container's, which stay at 0; Kubernetes gives
BestEffort pods 1000 (pkg/kubelet/qos/policy.go). Lowering a score below the lowest one set
with ``CAP_SYS_RESOURCE`` (``oom_score_adj_min``) needs that capability (proc(5)).
"""
from __future__ import annotations

import json
import os

import pytest

from pytest_nsbox.kernel import caps, libc, proc

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/oom_score_adj"),
                                reason="needs /proc/self/oom_score_adj")


def in_child(as_user: int | None = None,
             born_at: int | None = None) -> tuple[list[int] | None, int, bool]:
    """``choose_oom_scores()``'s answer in a forked child (first ``setuid(as_user)``, then
    its score raised to ``born_at``), the score it left the child at, and whether the
    child held CAP_SYS_RESOURCE."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            if as_user is not None:
                os.setgid(as_user)
                os.setuid(as_user)
                # as a user's own process: a uid change made it undumpable, and then its
                # /proc/self files belong to root (proc(5), "PR_SET_DUMPABLE")
                libc.prctl(libc.PR_SET_DUMPABLE, 1)
            if born_at is not None:
                proc.set_oom_score(born_at, strict=True)
            effective, = proc.status_field(os.getpid(), "CapEff") or ["0"]
            held = bool(int(effective, 16) & caps.mask([caps.SYS_RESOURCE]))
            scores = proc.choose_oom_scores()
            with open("/proc/self/oom_score_adj", encoding="ascii") as f:
                left = int(f.read())
            os.write(write, json.dumps([scores, left, held]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    scores, left, held = json.loads(data)
    return scores, left, held


def own_score() -> int:
    with open("/proc/self/oom_score_adj", encoding="ascii") as f:
        return int(f.read())


def test_this_process_chooses_by_its_capability() -> None:
    """With CAP_SYS_RESOURCE: init -999, commands 0, and the chooser left at -999; without
    it (this host withholds it from root): the init keeps its own score, commands 1000."""
    scores, left, held = in_child()
    own = own_score()
    if held:
        assert (scores, left) == (list(proc.OOM_SCORES_PRIVILEGED), -999)
    else:
        assert (scores, left) == ([own, proc.OOM_SCORE_UNPRIVILEGED], own)


@pytest.mark.skipif(os.geteuid() != 0, reason="setuid to another user needs root")
def test_a_normal_user_gets_the_unprivileged_scores() -> None:
    """A normal user (no capabilities at all) still gets commands above its own score, and
    the round trip back to its own score works: no privilege is needed down to it."""
    scores, left, held = in_child(as_user=65534)
    assert not held
    assert scores == [own_score(), proc.OOM_SCORE_UNPRIVILEGED] and left == own_score()


@pytest.mark.skipif(os.geteuid() != 0, reason="setuid to another user needs root")
def test_a_command_of_an_outer_box_brings_its_init_back_to_0() -> None:
    """An isolation worker is a command of its own box, born at 1000: the PID 1 it forks
    for a test goes back to 0 (allowed: the score it was raised from), below its test."""
    scores, left, held = in_child(as_user=65534, born_at=proc.OOM_SCORE_UNPRIVILEGED)
    assert not held
    assert scores == [0, proc.OOM_SCORE_UNPRIVILEGED] and left == 0


def test_set_oom_score_is_best_effort_unless_strict() -> None:
    """A score out of -1000..1000 is refused by the kernel (EINVAL): ignored, or raised
    with ``strict``."""
    before = own_score()
    proc.set_oom_score(5000)
    assert own_score() == before
    with pytest.raises(OSError):
        proc.set_oom_score(5000, strict=True)
