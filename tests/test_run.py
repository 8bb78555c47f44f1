"""Box.run / spawn semantics: arguments, input, env, cwd, user, timeouts, errors."""
from __future__ import annotations

import pytest

from pytest_nsbox import CommandFailed, SpecError

pytestmark = pytest.mark.sandbox(image="busybox")


def test_list_is_execd_and_string_goes_through_sh(nsbox):
    assert nsbox.run(["echo", "a  b", "$HOME"]).stdout == "a  b $HOME\n"
    assert nsbox.run("echo $HOME | tr a-z A-Z").stdout == "/ROOT\n"


def test_input_str_and_bytes(nsbox):
    assert nsbox.run(["cat"], input="hé").stdout == "hé"
    big = bytes(range(256)) * 4096
    result = nsbox.run(["cat"], input=big)
    assert result.stdout_bytes == big and len(result.stdout_bytes) == 1 << 20
    assert nsbox.run(["cat"]).stdout == ""


def test_output_is_decoded_with_replacement(nsbox):
    result = nsbox.run(["printf", "\\377ok"])
    assert result.stdout_bytes == b"\xffok" and result.stdout == "\ufffdok"


def test_env_cwd_and_user(nsbox):
    result = nsbox.run("echo $A-$B; pwd; id -u", env={"A": "1"}, cwd="/tmp", user="nobody")
    assert result.stdout.split() == ["1-", "/tmp", "65534"]
    assert nsbox.run("id -u:g", user="1234:5678").returncode != 0
    assert nsbox.run("id -u; id -g", user="1234:5678").stdout.split() == ["1234", "5678"]
    unknown = nsbox.run("true", user="ghost")
    assert unknown.returncode == 126 and "ghost" in unknown.stderr


@pytest.mark.sandbox(env={"FROM_MARKER": "yes"})
def test_marker_env_reaches_commands(nsbox):
    assert nsbox.run("echo $FROM_MARKER $HOSTNAME").stdout.split() == ["yes", nsbox.hostname]


def test_exit_status_signals_and_check(nsbox):
    assert nsbox.run("exit 7").returncode == 7
    assert nsbox.run("kill -TERM $$").returncode == -15
    with pytest.raises(CommandFailed) as info:
        nsbox.run("echo nope >&2; exit 2", check=True)
    assert info.value.result.returncode == 2
    assert "exited with status 2: nope" in str(info.value)


def test_missing_program_is_127_with_a_message(nsbox):
    result = nsbox.run(["/no/such/program"])
    assert result.returncode == 127
    assert "nsbox: No such file or directory" in result.stderr


def test_timeout_kills_and_marks(nsbox):
    result = nsbox.run("echo started; sleep 30", timeout=0.5)
    assert result.timed_out and result.returncode == -9
    assert result.stdout == "started\n"
    assert result.duration < 5
    with pytest.raises(CommandFailed, match="timed out"):
        nsbox.run(["sleep", "30"], timeout=0.2, check=True)


@pytest.mark.sandbox(timeout=0.3)
def test_marker_timeout_is_the_default_per_command(nsbox):
    assert nsbox.run(["sleep", "10"]).timed_out
    assert not nsbox.run(["sleep", "10"], timeout=0.01 + 0.5).returncode == 0


def test_background_output_holder_does_not_hang_run(nsbox):
    result = nsbox.run("sleep 30 & echo parent done", timeout=10)
    assert result.returncode == 0 and result.stdout == "parent done\n"
    assert result.duration < 5


def test_spawn_poll_wait_kill(nsbox):
    proc = nsbox.spawn("echo hi; exec sleep 30")
    assert isinstance(proc.pid, int) and proc.pid > 1
    nsbox.run("while ! ps -o comm | grep -qx sleep; do usleep 10000; done", timeout=10, check=True)
    assert proc.poll() is None
    proc.kill()
    result = proc.wait(timeout=10)
    assert result.returncode == -9 and result.stdout == "hi\n"
    assert proc.poll() == -9
    quick = nsbox.spawn(["sh", "-c", "cat; echo done"], input="in\n")
    assert quick.wait(timeout=10).stdout == "in\ndone\n"
    slow = nsbox.spawn(["sleep", "30"])
    assert slow.wait(timeout=0.2).timed_out


def test_a_spawned_commands_duration_ends_when_it_exits_not_when_waited_for(nsbox):
    """``RunResult.duration`` of a spawned command is its own lifetime (the init's reap
    time, ``Exited.ended``), as ``docker inspect``'s StartedAt to FinishedAt is: a
    ``wait()`` a second after it ended does not add that second."""
    quick = nsbox.spawn(["true"])
    nsbox.run("sleep 1", check=True)
    waited = quick.wait(timeout=10)
    assert waited.returncode == 0 and 0 <= waited.duration < 0.8, waited


def test_spawned_server_keeps_running_while_output_is_large(nsbox):
    proc = nsbox.spawn("yes | head -c 5000000; touch /tmp/written; sleep 30")
    done = nsbox.run("until [ -e /tmp/written ]; do sleep 0.05; done; echo alive", timeout=30)
    assert done.stdout == "alive\n"
    proc.kill()
    assert len(proc.wait(timeout=10).stdout_bytes) == 5000000


@pytest.mark.parametrize("cmd", [[], "", ["a\0b"], [1, 2], None, ("echo",)])
def test_bad_commands_are_spec_errors(nsbox, cmd):
    if cmd == ("echo",):
        assert nsbox.run(cmd).returncode == 0
        return
    if cmd == "":
        assert nsbox.run(cmd).returncode == 0  # `sh -c ''` is a valid no-op
        return
    with pytest.raises(SpecError, match=r"run\(cmd="):
        nsbox.run(cmd)


@pytest.mark.parametrize("env", [{"A=B": "1"}, {"": "1"}, {"A": None}, {"A": "x\0y"}])
def test_bad_env_is_a_spec_error(nsbox, env):
    with pytest.raises(SpecError, match=r"run\(env="):
        nsbox.run("true", env=env)


def test_file_roundtrip_and_errors(nsbox):
    nsbox.write_bytes("/tmp/b", b"\x00\x01")
    assert nsbox.read_bytes("/tmp/b") == b"\x00\x01"
    nsbox.write_text("relative.txt", "in workdir")
    assert nsbox.read_text("/relative.txt") == "in workdir"
    assert nsbox.exists("/tmp/b") and not nsbox.exists("/tmp/nope")
    with pytest.raises(FileNotFoundError):
        nsbox.read_text("/tmp/nope")
    with pytest.raises(FileNotFoundError):
        nsbox.write_text("/no/such/dir/file", "x")
    assert "b" in nsbox.listdir("/tmp")


def test_history_records_every_command(nsbox):
    nsbox.run("true")
    nsbox.run("false")
    assert [r.returncode for r in nsbox.history] == [0, 1]


def test_no_descriptor_of_the_owner_leaks_into_a_command(nsbox):
    fds = nsbox.run("ls /proc/self/fd", check=True).stdout.split()
    assert fds == ["0", "1", "2", "3"]  # 3 is ls's own handle on the directory
