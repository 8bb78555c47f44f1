"""Kept boxes can be entered: ``pytest --nsbox-keep=failed``, then ``python -m pytest_nsbox
ps`` and ``enter BOX -- CMD`` as a user runs them.

CONTRACT.md (Command line): ``ps`` lists "live and kept boxes"; ``enter`` runs "in a new box
over a kept box's layers". The new box stacks the image's layers and the kept read-write
layer as lower layers (as ``Box.commit`` stacks a box's layer on its image, and as Docker
runs a committed container: moby daemon/commit.go then ``docker run``) under a fresh
read-write layer: the kept layer is never written to. Each test runs its own pytest with a
run directory of its own (``nsbox_run_dir``) and the command line with ``--run``, so other
sessions' kept boxes never mix in, and removes what it kept with ``gc --kept``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_nsbox import records
from pytest_nsbox.state import default_run_dir
from pytest_nsbox.kernel.fs import remove_tree

pytestmark = pytest.mark.timeout(180)

FAILING_TEST = """
import pytest

@pytest.mark.sandbox(image="busybox", env={"FROM_MARKER": "marker"}, hostname="keeper")
def test_fails(nsbox):
    nsbox.run("mkdir /data && echo evidence > /data/marker && rm /etc/group", check=True)
    assert False, "keep me"

def test_passes(nsbox):
    nsbox.run("echo fine > /tmp/fine", check=True)
"""

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def own_run() -> Iterator[str]:
    """A run directory of this test's own, next to the default one (same filesystem)."""
    path = tempfile.mkdtemp(prefix="nsbox-kepttest-", dir=os.path.dirname(default_run_dir()))
    yield path
    remove_tree(path)


@pytest.fixture
def cli(own_run: str) -> Iterator[Cli]:
    """``python -m pytest_nsbox --run RUN ...``; kept boxes go with ``gc --kept`` at the end."""
    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest_nsbox", "--run", own_run, *args],
                              capture_output=True, text=True, input=input, timeout=120,
                              check=False)
    yield run
    done = run("gc", "--kept")
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(os.path.join(own_run, "kept")) or not os.listdir(
        os.path.join(own_run, "kept"))


def keep_failed(pytester: pytest.Pytester, own_run: str, source: str = FAILING_TEST,
                *args: str) -> pytest.RunResult:
    pytester.makepyfile(source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--nsbox-keep=failed",
                                         "-o", f"nsbox_run_dir={own_run}", *args)


def ps_rows(cli: Cli) -> list[list[str]]:
    done = cli("ps")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "IMAGE", "STATE", "OWNER", "AGE", "MEMORY",
                                "TEST"]
    return [line.split() for line in lines[1:]]


def test_a_failed_tests_box_is_listed_kept_and_entered(pytester: pytest.Pytester,
                                                       own_run: str, cli: Cli) -> None:
    """The issue's case: a failing test writes /data/marker; ``ps`` lists its box as kept;
    ``enter ID -- cat /data/marker`` prints it, and the command's exit status is enter's
    (as ``docker exec``'s is: docker/cli cli/command/container/exec.go). An unnamed kept
    box is ``box-<id>`` to ``ps``, as ``docker ps`` names a container by what it was given;
    its TEST column says which test it came from (the kept directory's label)."""
    result = keep_failed(pytester, own_run)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_fails: read-write layer kept at *"])
    rows = ps_rows(cli)
    assert len(rows) == 1  # only the failed test's box is kept
    box_id, name, image, state, owner, _age, memory, test = rows[0]
    assert (name, image, state, owner, memory, test) == (
        f"box-{box_id}", "busybox", "kept", "-", "-", "test_fails")
    assert cli("ps", "-q").stdout == f"{box_id}\n"

    done = cli("enter", box_id, "--", "cat", "/data/marker")
    assert (done.returncode, done.stdout) == (0, "evidence\n"), done.stderr
    done = cli("enter", box_id[:6], "--", "sh", "-c", "cat /data/marker >&2; exit 7")
    assert (done.returncode, done.stderr) == (7, "evidence\n")
    # a shell reading its commands from stdin, by the kept directory's name
    kept_dir = os.listdir(os.path.join(own_run, "kept"))
    assert kept_dir == [f"test_fails-{box_id}"]
    done = cli("enter", kept_dir[0], input="cat /data/marker\nexit 3\n")
    assert (done.returncode, done.stdout) == (3, "evidence\n"), done.stderr
    # after entering, nothing runs: only the kept box is listed
    assert [row[3] for row in ps_rows(cli)] == ["kept"]


def test_the_entered_box_is_the_kept_one(pytester: pytest.Pytester, own_run: str,
                                         cli: Cli) -> None:
    """What the kept box deleted stays deleted (its whiteouts work as a lower layer: OCI
    image-spec layer.md, whiteouts hide lower entries); its hostname and marker env come
    back; the image's files are there."""
    keep_failed(pytester, own_run).assert_outcomes(passed=1, failed=1)
    (box_id, *_rest), = ps_rows(cli)
    done = cli("enter", box_id, "--", "sh", "-c",
               "hostname; echo $FROM_MARKER; test -e /etc/group || echo no-group; "
               "cat /etc/passwd | head -1")
    assert done.stdout.splitlines() == ["keeper", "marker", "no-group",
                                        "root:x:0:0:root:/root:/bin/sh"], done.stderr


def test_entering_never_changes_the_kept_layer(pytester: pytest.Pytester, own_run: str,
                                               cli: Cli) -> None:
    """Changes made while entered are in the new box's own layer, deleted with it."""
    keep_failed(pytester, own_run).assert_outcomes(passed=1, failed=1)
    (box_id, *_rest), = ps_rows(cli)
    upper = Path(own_run) / "kept" / f"test_fails-{box_id}" / "upper"
    before = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    done = cli("enter", box_id, "--", "sh", "-c",
               "echo changed > /data/marker && rm -r /data && touch /new && echo x > /etc/group")
    assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(upper)) for p in upper.rglob("*")) == before
    assert (upper / "data" / "marker").read_text() == "evidence\n"
    done = cli("enter", box_id, "--", "sh", "-c", "cat /data/marker; test -e /new || echo none")
    assert done.stdout == "evidence\nnone\n", done.stderr
    assert os.listdir(os.path.join(own_run, "boxes")) == []  # the entered boxes are gone


def test_a_fixtures_image_box_keeps_its_workdir_env_and_binds(pytester: pytest.Pytester,
                                                              own_run: str, cli: Cli,
                                                              tmp_path: Path) -> None:
    """The new box runs over the kept box's built image (its layers by path, so nothing is
    rebuilt), in the image's WORKDIR with its ENV (docker/cli docs/reference/commandline/
    container_exec.md: COMMAND runs in the container's WORKDIR), and with the marker's
    binds, read-only where they were."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the host\n")
    app = pytester.path / "fixtures_images" / "app"
    app.mkdir(parents=True)
    (app / "Containerfile").write_text(
        "FROM busybox\nRUN mkdir -p /srv/app && echo built > /srv/app/built\n"
        "ENV APP_MODE=debug\nWORKDIR /srv/app\n")
    source = f"""
import pytest

@pytest.mark.sandbox(image="app", binds={{"{shared}": "/shared:ro"}})
def test_fails(nsbox):
    nsbox.run("echo result > result", check=True)
    assert False
"""
    keep_failed(pytester, own_run, source, "-o",
                f"nsbox_store_dir={pytester.path / 'store'}").assert_outcomes(failed=1)
    (box_id, _name, image, state, *_rest), = ps_rows(cli)
    assert (image, state) == ("app", "kept")
    done = cli("enter", box_id, "--", "sh", "-c",
               "pwd; echo $APP_MODE; cat built result /shared/note; touch /shared/x")
    assert done.stdout.splitlines() == ["/srv/app", "debug", "built", "result",
                                        "from the host"], done.stderr
    assert "Read-only file system" in done.stderr and done.returncode == 1


def test_gc_kept_removes_kept_boxes(pytester: pytest.Pytester, own_run: str, cli: Cli) -> None:
    keep_failed(pytester, own_run).assert_outcomes(passed=1, failed=1)
    (box_id, *_rest), = ps_rows(cli)
    done = cli("gc")  # without --kept, kept boxes stay
    assert done.returncode == 0 and box_id not in done.stdout
    done = cli("gc", "--kept")
    assert f"removed kept box {box_id} (box-{box_id})" in done.stdout, done.stderr
    assert ps_rows(cli) == []
    done = cli("enter", box_id, "--", "true")
    assert done.returncode == 1 and done.stderr.startswith(f"nsbox: no box '{box_id}' in ")


def test_prune_spares_a_kept_boxs_layers_and_a_lost_layer_is_named(
        pytester: pytest.Pytester, own_run: str, cli: Cli) -> None:
    """``images rm`` then ``prune`` leave the layers a kept box stands on, as ``docker image
    prune`` keeps images that stopped containers use (docker/cli docs/reference/commandline/
    image_prune.md: only images "not referenced by any container"). A layer lost anyway
    (deleted by hand, or a reboot of a tmpfs) gives a one-line error naming the image, the
    missing layer and where the kept layer still is; no traceback."""
    app = pytester.path / "fixtures_images" / "gone"
    app.mkdir(parents=True)
    (app / "Containerfile").write_text("FROM busybox\nRUN echo one > /one\n")
    store = pytester.path / "store"
    keep_failed(pytester, own_run, "import pytest\n\n@pytest.mark.sandbox(image='gone')\n"
                                   "def test_fails(nsbox):\n    assert False\n",
                "-o", f"nsbox_store_dir={store}").assert_outcomes(failed=1)
    (box_id, *_rest), = ps_rows(cli)
    for args in (("images", "rm", "gone"), ("images", "prune")):
        done = cli("--store", str(store), *args)
        assert done.returncode == 0, done.stderr
    done = cli("enter", box_id, "--", "cat", "/one")
    assert (done.returncode, done.stdout) == (0, "one\n"), done.stderr

    owner = Path(own_run) / "kept" / f"test_fails-{box_id}" / "owner.json"
    top = json.loads(owner.read_text())["kept"]["image"]["layers"][-1]
    remove_tree(str(store / "layers" / top))
    done = cli("enter", box_id, "--", "true")
    assert done.returncode == 1
    assert done.stderr.startswith(f"nsbox: box {box_id} (box-{box_id}): its image 'gone' ("), \
        done.stderr
    assert "no longer exists" in done.stderr and f"test_fails-{box_id}/upper" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_built_in_image_is_found_again_when_its_layer_dirs_moved(
        pytester: pytest.Pytester, own_run: str, cli: Cli) -> None:
    """busybox's layer is rebuilt from the host's binary with the same id: the recorded
    layer directory is gone (e.g. a store moved), the image is looked up by ref again."""
    keep_failed(pytester, own_run).assert_outcomes(passed=1, failed=1)
    (box_id, *_rest), = ps_rows(cli)
    owner = Path(own_run) / "kept" / f"test_fails-{box_id}" / "owner.json"
    record = json.loads(owner.read_text())
    record["kept"]["image"]["layer_dirs"] = ["/nonexistent/nsbox-layer"]
    owner.write_text(json.dumps(record))
    done = cli("enter", box_id, "--", "cat", "/data/marker")
    assert (done.returncode, done.stdout) == (0, "evidence\n"), done.stderr


def test_a_kept_box_without_a_record_says_where_its_layer_is(own_run: str, cli: Cli) -> None:
    """Kept by an older version (no ``kept`` record): the error names the layer's path."""
    old = Path(own_run) / "kept" / "test_x-abc123def456"
    (old / "upper").mkdir(parents=True)
    rows = ps_rows(cli)
    assert [row[0] for row in rows] == ["abc123def456"] and rows[0][3] == "kept"
    done = cli("enter", "abc123", "--", "true")
    assert done.returncode == 1
    assert done.stderr == (f"nsbox: box abc123def456 (?) was kept without a record of its "
                           f"image (by an older pytest-nsbox, or its owner.json is "
                           f"unreadable), so no box can be started over it; its read-write "
                           f"layer is at {old / 'upper'}\n")


@pytest.mark.parametrize("label, expected", [
    ("test_x.py::test_y", "test_x.py_test_y-0123456789ab"),
    ("tests/test_x.py::test_y[a,b:c d]", "tests_test_x.py_test_y_a_b_c_d-0123456789ab"),
    ("::", "box-0123456789ab"),
])
def test_kept_dir_names_are_safe_overlay_layers(label: str, expected: str) -> None:
    """A kept layer becomes an overlay lowerdir, where ``:`` separates layers and ``,``
    options (Linux Documentation/filesystems/overlayfs.rst, "Multiple lower layers")."""
    assert records.dir_name(label, "0123456789ab") == expected


def test_kept_dir_names_stay_under_name_max() -> None:
    name = records.dir_name("test_" + "x" * 400, "0123456789ab")
    assert len(name) == records.LABEL_MAX + 13 and name.endswith("-0123456789ab")
