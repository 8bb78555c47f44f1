"""What a user sees when something is wrong: one clear line, said once, naming the place.

Issue 9's follow-ups found by a tester: limits Docker refuses before it starts anything,
image and build errors shown twice (chained), build args blamed on the wrong option, an
owner lock left behind by a script, file API errors naming a descriptor, build errors with
no line. Each test cites the reference its expected behaviour comes from.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_nsbox import Box, SpecError
from pytest_nsbox.errors import ImageError
from pytest_nsbox.kernel.fs import remove_tree
from pytest_nsbox.kernel.proc import available_cpus
from pytest_nsbox.state import default_run_dir

from test_images import Fresh, _can_run

pytestmark = pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}")

CHAINED = "During handling of the above exception"


def run_pytest(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(source)
    # -rN: no short summary, so every message below is counted where the test reports it
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rN", *args)


def shown_once(result: pytest.RunResult, text: str) -> None:
    out = result.stdout.str()
    assert CHAINED not in out, out
    assert out.count(text) == 1, out


# -- 1 and 7: limits Docker refuses -----------------------------------------------------

def test_limits_docker_refuses_are_one_line_setup_errors(pytester: pytest.Pytester) -> None:
    """moby daemon/daemon_unix.go ``verifyPlatformContainerResources``: ``Memory <
    linuxMinMemory`` ("Minimum memory limit allowed is 6MB") and ``NanoCPUs`` outside
    "0.01 to N.00, as there are only N CPUs available" are refused before a container
    starts. The tester's inputs: ``memory="4096"`` ("its init died during setup"),
    ``"512k"`` (returncode 126), ``cpus=0.001`` (quota 1000 silently) and ``cpus=1000`` on
    a 2-CPU host (accepted). Each is the marker's one-line spec error."""
    too_many = available_cpus() + 1
    result = run_pytest(pytester, f"""
        import pytest

        @pytest.mark.sandbox(image="busybox", memory="4096")
        def test_bytes(nsbox): pass

        @pytest.mark.sandbox(image="busybox", memory="512k")
        def test_kib(nsbox): pass

        @pytest.mark.sandbox(image="busybox", cpus=0.001)
        def test_tiny_cpus(nsbox): pass

        @pytest.mark.sandbox(image="busybox", cpus={too_many})
        def test_more_cpus_than_the_host(nsbox): pass

        def test_factory(nsbox_factory):
            nsbox_factory(image="busybox", memory="1M")
    """)
    result.assert_outcomes(errors=4, failed=1)
    for line in (
        "*::test_bytes: sandbox(memory='4096'): less than 6M (6291456 bytes), the least a box "
        "can start in (Docker: \"Minimum memory limit allowed is 6MB\"); use e.g. '64M'",
        "*::test_kib: sandbox(memory='512k'): less than 6M*",
        "*::test_tiny_cpus: sandbox(cpus=0.001): less than 0.01; the range of CPUs is from "
        "0.01 to*",
        f"*::test_more_cpus_than_the_host: spec(cpus={float(too_many)!r}): more than this "
        f"host's {too_many - 1} CPUs; the range of CPUs is from 0.01 to {too_many - 1}.00, as "
        f"there are only {too_many - 1} CPUs available (as Docker's --cpus); use e.g. 0.5",
        "*::test_factory: nsbox_factory(memory='1M'): less than 6M*",
    ):
        result.stdout.fnmatch_lines([line])
    shown_once(result, "sandbox(memory='4096')")
    shown_once(result, "nsbox_factory(memory='1M')")


def test_box_refuses_limits_before_starting() -> None:
    """moby daemon/daemon_unix.go: the checks run before anything is created, so ``Box``
    raises ``SpecError`` (not a ``BoxError`` from a box that died starting); the CPU
    count is moby pkg/sysinfo ``NumCPU`` (the affinity mask) at box creation."""
    with pytest.raises(SpecError, match=r"^Box\(memory='512k'\): less than 6M"):
        Box(image="busybox", memory="512k")
    with pytest.raises(SpecError, match=r"^Box\(cpus=1000\.0\): more than this host's \d+ "
                                        r"CPUs; the range of CPUs is from 0\.01 to \d+\.00, as "
                                        r"there are only \d+ CPUs available"):
        Box(image="busybox", cpus=1000)
    with pytest.raises(SpecError, match=r"^Box\(cpus='1\.5 '\): not a number of CPUs: spaces"):
        Box(image="busybox", cpus="1.5 ")
    with Box(image="busybox", memory="6M", cpus=available_cpus()) as box:
        assert box.run("true").returncode == 0  # the bounds themselves are allowed


# -- 2: image and build errors at setup, once -------------------------------------------

def test_image_errors_at_setup_are_shown_once_on_one_line(pytester: pytest.Pytester) -> None:
    """Python's ``raise ... from None`` (PEP 409) / pytest ``FormattedExcinfo`` honouring
    ``__suppress_context__``: the failure is the image's error alone, not chained to it
    ("During handling of the above exception"). skopeo/containers/image name the
    transport and path (``docker-archive:/etc/passwd``); moby pkg/archive
    ``DetectCompression`` tells a compressed archive by its magic, so a file that is no tar
    gets one reason, not tarfile's four. A Containerfile error keeps its
    ``Containerfile:N: INSTR:`` line."""
    pytester.makefile(".tar", empty="")
    (pytester.path / "garbage.tar").write_bytes(b"\x1f\x8b\x08 not really gzip")
    images = pytester.mkpydir("fixtures_images")
    (images / "broken").mkdir()
    (images / "broken" / "Containerfile").write_text("FROM busybox\nFROBNICATE now\n")
    result = run_pytest(pytester, """
        import pytest

        @pytest.mark.sandbox(image="oci:/nonexistent:app:1.0")
        def test_layout(nsbox): pass

        @pytest.mark.sandbox(image="docker-archive:/etc/passwd")
        def test_not_a_tar(nsbox): pass

        @pytest.mark.sandbox(image="docker-archive:empty.tar")
        def test_empty(nsbox): pass

        @pytest.mark.sandbox(image="oci-archive:garbage.tar")
        def test_garbage(nsbox): pass

        @pytest.mark.sandbox(image="broken")
        def test_containerfile(nsbox): pass
    """)
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines([
        "*::test_layout: image 'oci:/nonexistent:app:1.0': /nonexistent does not exist*",
        "*::test_not_a_tar: docker-archive:/etc/passwd: not a tar archive (docker save "
        "output): invalid header",
        "*::test_empty: docker-archive:empty.tar: not a tar archive (docker save output): "
        "empty file",
        "*::test_garbage: oci-archive:garbage.tar: not a tar archive (an OCI archive): *",
        "*::test_containerfile: *Containerfile:2: FROBNICATE: *",
    ])
    out = result.stdout.str()
    assert CHAINED not in out and "method gz" not in out, out
    for text in ("oci:/nonexistent:app:1.0", "docker-archive:/etc/passwd",
                 "Containerfile:2: FROBNICATE"):
        assert out.count(text) == 1, out


def test_load_names_the_file_when_no_reference_was_given(tmp_path: Path) -> None:
    """``nsbox_images.load(path)``: the path, and both kinds it could have been."""
    from pytest_nsbox.images.oci import load_path

    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n" * 200)
    with pytest.raises(ImageError) as info:
        load_path(Fresh(tmp_path).store, str(bad))
    assert str(info.value) == (f"{bad}: not a tar archive (docker save output or an OCI "
                               f"archive): invalid header")


# -- 3: build args name their source ----------------------------------------------------

@pytest.mark.parametrize(("args", "ini", "message"), [
    (["--nsbox-build-arg", "=x"], "",
     "ERROR: --nsbox-build-arg '=x': not KEY=VALUE (the name is empty); use e.g. VERSION=1.2"),
    (["--nsbox-build-arg", ""], "",
     "ERROR: --nsbox-build-arg '': not KEY=VALUE (the name is empty); use e.g. VERSION=1.2"),
    ([], "nsbox_build_args =\n    A=1\n    =bad\n",
     "ERROR: ini nsbox_build_args '=bad': not KEY=VALUE (the name is empty); use e.g. "
     "VERSION=1.2"),
])
def test_a_bad_build_arg_is_a_usage_error_naming_its_source(
        pytester: pytest.Pytester, args: list[str], ini: str, message: str) -> None:
    """docker/cli opts/env.go ``ValidateEnv``: an empty name, ``--build-arg ''`` included,
    is refused ("invalid environment variable"). Ours names the option the user gave
    (the tester saw ``--build-arg '=x'`` for ``--nsbox-build-arg =x``) and is said once,
    before any test, as pytest says a bad option (``pytest.UsageError``)."""
    if ini:
        pytester.makeini("[pytest]\n" + ini)
    result = run_pytest(pytester, "def test_a(nsbox): pass\n", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines.count(message) == 1, result.stderr.str()
    assert CHAINED not in result.stderr.str() + result.stdout.str()


def test_the_cli_names_its_own_build_arg_option(tmp_path: Path) -> None:
    """docker/cli ``ValidateEnv`` for ``images build --build-arg ''``: one ``nsbox:`` line
    naming the subcommand's option, exit status 1 (README: one ``nsbox: ...`` line)."""
    (tmp_path / "Containerfile").write_text("FROM busybox\n")
    done = subprocess.run([sys.executable, "-m", "pytest_nsbox", "images", "build",
                           "--build-arg", "", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (
        1, "nsbox: images build --build-arg '': not KEY=VALUE (the name is empty); use e.g. "
           "VERSION=1.2\n")


# -- 4: a script's owner lock -----------------------------------------------------------

@pytest.fixture
def own_run() -> Iterator[str]:
    """A run directory of this test's own, next to the default one."""
    path = tempfile.mkdtemp(prefix="nsbox-lock-", dir=os.path.dirname(default_run_dir()))
    yield path
    remove_tree(path)


SCRIPTS = {
    "closed": "with Box(image='busybox') as b:\n    b.run('true')\n",
    "left-open": "b = Box(image='busybox')\nb.run('true')\n",
    "spec-error": ("with Box(image='busybox') as b:\n    b.run('true')\n"
                   "try:\n    Box(image='busybox', memory='4096')\n"
                   "except SpecError as exc:\n    print(exc)\n"),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_a_script_removes_its_owner_lock_at_exit(own_run: str, script: str) -> None:
    """A lock's owner removes it at a clean end, as a pytest session does at unconfigure
    (the model: a pidfile removed by its daemon at exit; Python's ``atexit``). The
    tester's case: ``Box`` used from ``python -c`` left ``<run>/owners/<pid>-<hex>.lock``
    for ``gc`` to find "(its process is gone)"; also when a box failed its spec check."""
    code = "from pytest_nsbox import Box, SpecError\n" + SCRIPTS[script]
    env = {**os.environ, "NSBOX_RUN": own_run}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert os.listdir(os.path.join(own_run, "owners")) == []
    gc = subprocess.run([sys.executable, "-m", "pytest_nsbox", "--run", own_run, "gc",
                         "--dry-run"], capture_output=True, text=True, timeout=120,
                        check=False)
    assert gc.returncode == 0, gc.stderr
    assert "owner lock" not in gc.stdout + gc.stderr
    # a box left open is killed at exit; what it left on disk is gc's, as after a crash
    gc = subprocess.run([sys.executable, "-m", "pytest_nsbox", "--run", own_run, "gc"],
                        capture_output=True, text=True, timeout=120, check=False)
    assert gc.returncode == 0, gc.stderr
    assert os.listdir(os.path.join(own_run, "boxes")) == []


# -- 5: the file API names the box path -------------------------------------------------

def test_file_api_errors_name_the_path_in_the_box() -> None:
    """Python's ``open()`` puts the path it was given in ``OSError.filename`` (never a
    descriptor): the tester's ``read_text("/d")`` on a directory said ``Is a directory:
    7``. Every method (read, write, exists, listdir) names the normalized box path and
    the box, with the errno's own exception class."""
    with Box(image="busybox", name="files") as box:
        box.run("mkdir /d && touch /f && ln -s loop1 /loop2 && ln -s loop2 /loop1", check=True)
        cases = [
            (lambda: box.read_text("/d"), IsADirectoryError, "/d"),
            (lambda: box.read_bytes("d/"), IsADirectoryError, "/d/"),
            (lambda: box.read_text("/missing"), FileNotFoundError, "/missing"),
            (lambda: box.read_bytes("/f/x"), NotADirectoryError, "/f/x"),
            (lambda: box.write_text("/d", "x"), IsADirectoryError, "/d"),
            (lambda: box.write_bytes("/no/dir/x", b"x"), FileNotFoundError, "/no/dir/x"),
            (lambda: box.exists("/loop1/x"), OSError, "/loop1/x"),
            (lambda: box.listdir("/f"), NotADirectoryError, "/f"),
            (lambda: box.listdir("missing"), FileNotFoundError, "/missing"),
        ]
        for call, kind, path in cases:
            with pytest.raises(kind) as info:
                call()
            assert info.value.filename == path
            assert f"(a path in box 'files'): '{path}'" in str(info.value)
        assert box.exists("/missing") is False  # not an error: the answer
        box.write_bytes("/big", b"x" * 3_000_000)
        assert box.read_bytes("/big") == b"x" * 3_000_000


# -- 6: every build error has its line --------------------------------------------------

@pytest.mark.parametrize(("step", "where"), [
    ("COPY f /loop1/x", "/loop1"), ("ADD f /loop1/x", "/loop1"),
    ("WORKDIR /loop1/sub", "/loop1/sub"), ("COPY f /loop1/", "/loop1/"),
])
def test_a_symlink_loop_in_a_build_destination_names_the_line(tmp_path: Path, step: str,
                                                               where: str) -> None:
    """moby/buildkit reports a failed step with its Dockerfile location (``errdefs``
    source location; ``Dockerfile:N``); we put ``Containerfile:N: INSTR:`` on every error
    a step raises, once, where the builder dispatches steps. The tester's input: a loop
    ``/loop1 -> loop2 -> loop1`` under COPY, ADD or WORKDIR gave no location."""
    fresh = Fresh(tmp_path)
    try:
        folder = fresh.image_dir("looped", "FROM busybox\n"
                                 "RUN ln -s loop1 /loop2 && ln -s loop2 /loop1\n"
                                 f"{step}\n", f="data\n")
        with pytest.raises(ImageError) as info:
            fresh.store.build("looped")
        assert str(info.value) == (f"{folder / 'Containerfile'}:3: {step.split()[0]}: "
                                   f"{where}: too many levels of symbolic links (a loop?)")
    finally:
        fresh.close()


def test_a_located_build_error_is_not_located_twice(tmp_path: Path) -> None:
    """A step's own error already starts ``Containerfile:N:``; the dispatcher leaves it."""
    fresh = Fresh(tmp_path)
    try:
        folder = fresh.image_dir("nosrc", "FROM busybox\nCOPY missing /x\n")
        with pytest.raises(ImageError) as info:
            fresh.store.build("nosrc")
        message = str(info.value)
        assert message.startswith(f"{folder / 'Containerfile'}:2: COPY")
        assert message.count("Containerfile:2") == 1
        assert textwrap.shorten(message, 1000) == message  # one line
    finally:
        fresh.close()
