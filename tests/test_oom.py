"""``RunResult.oom_killed`` as Docker's ``OOMKilled``: any process of the box, per command.

Reference: moby ``daemon/monitor.go`` ``ProcessEvent``: on ``EventOOM`` the container's
``OOMKilled`` is set, whichever of its processes the kernel chose; containerd raises that
event when the cgroup's ``oom_kill`` count grows (``pkg/oom/v2/v2.go``; v1: the
``memory.oom_control`` eventfd, ``pkg/oom/v1/v1.go``). A command's result covers the kills
between sending it and its exit; a ``spawn()``ed process's covers its own lifetime.
"""
from __future__ import annotations

import fnmatch
import time

import pytest

from pytest_nsbox import CommandFailed
from pytest_nsbox.report import box_section
from pytest_nsbox.model.results import RunResult

pytestmark = pytest.mark.timeout(120)

# dd's 200 MiB block buffer cannot fit under the 64 MiB limit: the kernel kills dd.
HOG = "dd if=/dev/zero of=/dev/null bs=200M count=1"
HOG_ARGV = HOG.split()
SANDBOX = pytest.mark.sandbox(image="busybox", memory="64M")


@SANDBOX
def test_child_of_sh_killed_in_a_pipeline(nsbox):
    """The issue's input: ``sh -c 'dd ... | cat'`` exits 0 (cat's status) while dd, its
    child, is killed for memory. Docker reports ``OOMKilled`` for any process killed."""
    result = nsbox.run(f"{HOG} | cat; echo after", timeout=60)
    assert result.returncode == 0, result
    assert result.stdout == "after\n"
    assert result.oom_killed, result
    assert nsbox.stats().oom_kills >= 1


@SANDBOX
def test_child_of_sh_killed_and_the_shell_reports_it(nsbox):
    """A shell that runs the hog as a child (not exec'd) sees 128+9; still an OOM kill."""
    result = nsbox.run(f"{HOG}; exit $?", timeout=60)
    assert result.returncode == 137, result
    assert result.oom_killed, result


@SANDBOX
def test_the_command_itself_killed(nsbox):
    """The plain case: the command's own process is the victim (-9 and oom_killed)."""
    result = nsbox.run(HOG_ARGV, timeout=60)
    assert result.returncode == -9 and result.oom_killed, result


@SANDBOX
def test_a_background_process_killed_while_the_command_runs(nsbox):
    """A process the test spawned earlier is killed while another command runs: both that
    command's result and the spawned process's report it (moby: any process of the box).
    Tried up to three times until the command lives: the kernel may kill it too (see
    ``test_spawned_process_sees_kills_during_its_life_only``)."""
    for attempt in range(3):
        hog = nsbox.spawn(["sh", "-c",
                           f"while [ ! -e /go{attempt} ]; do sleep 0.02; done; exec {HOG}"])
        assert hog.pid is not None
        # The command starts the hog and ends only once the hog is gone (killed and reaped).
        result = nsbox.run(f"touch /go{attempt}; "
                           f"while kill -0 {hog.pid} 2>/dev/null; do sleep 0.02; done",
                           timeout=60)
        assert result.oom_killed, result
        waited = hog.wait(timeout=30)
        assert waited.returncode == -9 and waited.oom_killed, waited
        if result.returncode == 0:
            break
        assert result.returncode == -9, result  # killed for memory itself: again
    assert result.returncode == 0, result


@SANDBOX
def test_a_command_after_the_kill_does_not_report_it(nsbox):
    """The count is compared per command: a kill before a command is not that command's."""
    assert nsbox.run(HOG_ARGV, timeout=60).oom_killed
    after = nsbox.run(["true"])
    assert after.returncode == 0 and not after.oom_killed, after
    later = nsbox.run(f"{HOG} | cat", timeout=60)
    assert later.oom_killed  # a second kill is seen again
    spawned = nsbox.spawn(["sleep", "0.1"])
    assert not spawned.wait(timeout=30).oom_killed
    assert [r.oom_killed for r in nsbox.history] == [True, False, True, False]


@SANDBOX
def test_spawned_process_sees_kills_during_its_life_only(nsbox):
    """``spawn()`` then ``wait()``: a kill of another process while it lives counts; one
    after it exited does not, even if ``wait()`` comes later.

    The kernel may kill the living process too: when the hog is slow to exit (seen under
    the VM's emulation), the OOM reaper gives up on it and marks it skipped
    (``MMF_OOM_SKIP``, mm/oom_kill.c), and the next charge that fails picks another
    victim. Then it is tried again, up to three times, until the living process lives."""
    for attempt in range(3):
        alive = nsbox.spawn(["sh", "-c", f"while [ ! -e /stop{attempt} ]; do sleep 0.02; done"])
        done = nsbox.spawn(["true"])
        deadline = time.monotonic() + 30
        while done.poll() is None and time.monotonic() < deadline:  # it ends before the kill
            time.sleep(0.01)
        assert nsbox.run(HOG_ARGV, timeout=60).oom_killed
        started_after = nsbox.spawn(["true"])
        nsbox.write_text(f"/stop{attempt}", "")
        lived = alive.wait(timeout=30)
        assert lived.oom_killed, lived
        assert done.wait().returncode == 0 and not done.wait().oom_killed
        assert not started_after.wait(timeout=30).oom_killed
        if lived.returncode == 0:
            break
        assert lived.returncode == -9, lived  # killed for memory itself: again
    assert lived.returncode == 0, lived


@SANDBOX
def test_timed_out_command_with_an_oom_kill(nsbox):
    """A command that timed out while the kernel killed one of its children has both flags
    (Docker's OOMKilled does not depend on how the container ended)."""
    result = nsbox.run(f"{HOG} | cat; sleep 30", timeout=5)  # room for the VM's emulation
    assert result.timed_out and result.oom_killed, result
    assert result.returncode == -9


@pytest.mark.sandbox(image="busybox", memory="64M")
def test_the_oom_killer_picks_the_commands_processes_not_the_init(nsbox):
    """The box's init (a Python process, larger than most commands) must not be what the
    OOM killer picks: with CAP_SYS_RESOURCE it lowers its own ``oom_score_adj`` to -999
    and commands get 0 (as in Docker); without it (rootless, or a host that withholds
    it, as this one does) commands get 1000, as Kubernetes' BestEffort pods do
    (pkg/kubelet/qos/policy.go). A command's children forked at once have its score too
    (proc(5): inherited), since the init takes the command's score around the spawn. At
    64M, a pipeline whose ``tail`` holds 200 MB is killed three times and the box lives,
    with a command beside it (``sleep``) that a second kill would take first.

    The score adds ``oom_score_adj / 1000`` of the limit to a process's resident pages
    (mm/oom_kill.c ``oom_badness``): at a limit near the init's own resident size (about
    16 MB here, shared library pages included) it cannot outweigh it, and the init may be a
    second victim while a killed hog is slow to exit (seen at 16M in the VM)."""
    scores = nsbox.run("cat /proc/self/oom_score_adj; (cat /proc/self/oom_score_adj) | cat; "
                       "cat /proc/1/oom_score_adj").stdout.split()
    command, child, init = scores
    assert command == child
    assert (init, command) == ("-999", "0") or (command == "1000" and int(init) < 1000)
    bystander = nsbox.spawn(["sleep", "600"])
    for _ in range(3):
        assert nsbox.run("head -c 209715200 /dev/zero | tail | wc -c", timeout=120).oom_killed
        assert nsbox.run("echo alive").stdout == "alive\n"
        if bystander.poll() is not None:  # it was a second victim: another one
            bystander = nsbox.spawn(["sleep", "600"])
    bystander.kill()


@pytest.mark.sandbox(image="busybox")
def test_no_oom_no_flag_without_a_limit(nsbox):
    """Without a memory limit and with enough memory nothing is killed."""
    result = nsbox.run("dd if=/dev/zero of=/dev/null bs=16M count=1 | cat")
    assert result.returncode == 0 and not result.oom_killed, result


@SANDBOX
def test_check_names_the_oom_kill_of_another_process(nsbox):
    """``check=True``: the message says the status came after a kill in the box."""
    with pytest.raises(CommandFailed) as err:
        nsbox.run(f"{HOG} | cat; exit 3", timeout=60, check=True)
    assert err.value.result.oom_killed
    message = str(err.value)
    assert "exited with status 3 after the kernel killed a process of its box for memory" \
        in message, message
    with pytest.raises(CommandFailed, match="was killed for memory"):
        nsbox.run(HOG_ARGV, timeout=60, check=True)


@SANDBOX
def test_report_section_after_a_child_kill(nsbox):
    """The failure report says the command exited 0 and a process of the box was killed,
    not that the command was killed."""
    nsbox.run(f"{HOG} | cat", timeout=60)
    nsbox.run(HOG_ARGV, timeout=60)
    nsbox.run(["true"])
    section = box_section(nsbox).splitlines()
    commands = [line for line in section if line.startswith("  $ ")]
    assert [fnmatch.fnmatch(line, pattern) for line, pattern in zip(commands, [
        f"  $ {HOG} | cat  -> exit 0; out of memory: the kernel killed a process of the box in *",
        f"  $ {HOG}  -> killed: out of memory in *",
        "  $ true  -> exit 0 in *",
    ])] == [True, True, True], section
    assert section[-1].startswith(f"box {nsbox.name!r}: memory limit 64.0 MiB reached"), section


def _result(returncode: int, *, oom: bool = False, timed_out: bool = False) -> RunResult:
    return RunResult(args="x", returncode=returncode, stdout_bytes=b"", stderr_bytes=b"",
                     duration=0.5, oom_killed=oom, timed_out=timed_out)


@pytest.mark.parametrize("result, status", [
    (_result(-9, oom=True), "killed: out of memory"),
    (_result(0, oom=True), "exit 0; out of memory: the kernel killed a process of the box"),
    (_result(137, oom=True), "exit 137; out of memory: the kernel killed a process of the box"),
    (_result(-15, oom=True), "killed by signal 15; out of memory: the kernel killed a process "
                             "of the box"),
    (_result(-9, oom=True, timed_out=True), "timed out, killed; out of memory: the kernel "
                                            "killed a process of the box"),
    (_result(-9), "killed by signal 9"),
    (_result(-9, timed_out=True), "timed out, killed"),
    (_result(2), "exit 2"),
])
def test_report_status_words(result, status):
    """Each combination of exit, signal, timeout and OOM in the report's status words."""
    from pytest_nsbox.report import _status

    assert _status(result) == status


def test_oom_of_a_child_in_the_failure_report(pytester):
    """As users meet it: a failed test's report shows the command's own exit and the OOM
    kill in its box, then the box's memory line."""
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.sandbox(image="busybox", memory="64M", name="piped")
        def test_piped(nsbox):
            result = nsbox.run({HOG + " | cat"!r}, timeout=60)
            assert not result.oom_killed
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*nsbox boxes*",
        f"*$ {HOG} | cat  -> exit 0; out of memory: the kernel killed a process of the box in *",
        "box 'piped': memory limit 64.0 MiB reached (peak 6*MiB), * killed",
    ])


class _StatsOnlyBox:
    """What ``oom_line`` reads of a box: its name, history, spec and stats."""

    def __init__(self, limit: int | None, kills: int) -> None:
        from types import SimpleNamespace

        from pytest_nsbox.cgroups import Stats

        self.name = "b"
        self.history: list[RunResult] = []
        self.spec = SimpleNamespace(memory=limit)
        self._stats = Stats(memory_current=1, memory_peak=2 * 1024**2, memory_limit=limit,
                            cpu_seconds=0.0, pids_current=1, oom_kills=kills)

    def stats(self):
        return self._stats


@pytest.mark.parametrize("limit, kills, line", [
    (64 * 1024**2, 1, "box 'b': memory limit 64.0 MiB reached (peak 2.0 MiB), 1 process killed"),
    (64 * 1024**2, 3, "box 'b': memory limit 64.0 MiB reached (peak 2.0 MiB), 3 processes "
                      "killed"),
    (None, 1, "box 'b': out of memory with no memory limit of its own (the host's or a parent "
              "cgroup's ran out) (peak 2.0 MiB), 1 process killed"),
    (64 * 1024**2, 0, None),
])
def test_report_memory_line(limit, kills, line):
    """The box's memory line names its own limit, and says when there was none (the kill
    then came from the host's or a parent cgroup's shortage: cgroup-v2.rst, memory.events
    ``oom_kill`` counts kills of any kind)."""
    from pytest_nsbox.report import oom_line

    assert oom_line(_StatsOnlyBox(limit, kills)) == line
