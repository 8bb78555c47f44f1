"""The ``host`` image with a system Python: the OS directories stay copy-on-write.

With Debian's ``/usr/bin/python3`` (or a venv made from it) ``sys.base_prefix`` is ``/usr``.
Binding that read-only, as the Python used to be bound, made all of ``/usr`` read-only in
every host box, and ``pip install`` in a ``FROM host`` step fell back to ``/root/.local``.
A Docker container's root is one copy-on-write overlay over every image directory
(moby daemon/graphdriver/overlay2/overlay.go: the container's ``diff`` dir is the
``upperdir``), so a box may write anywhere in ``/usr`` and only its own layer changes.

The end-to-end tests run pytest from a venv made from Debian's python3, sharing this
suite's site-packages through a ``.pth`` file (no network, nothing installed).
"""
from __future__ import annotations

import os
import secrets
import site
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pytest_nsbox
from pytest_nsbox.images import builtin
from pytest_nsbox.runtime import plan
from pytest_nsbox.runtime.plan import host_binds
from pytest_nsbox.model.spec import Bind

pytestmark = pytest.mark.timeout(300)

SYSTEM_PYTHON = "/usr/bin/python3"
SetPython = Callable[[str | Path, str | Path], None]
REPO = Path(pytest_nsbox.__file__).resolve().parent.parent


def _system_python_version() -> str | None:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return None
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture(scope="module")
def debian_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv made from Debian's python3 in /tmp (hidden in a host box, so it is bound),
    that imports pytest and pytest_nsbox from this suite's site-packages."""
    version = _system_python_version()
    mine = "%d.%d" % sys.version_info[:2]
    if version is None:
        pytest.skip(f"no {SYSTEM_PYTHON}: these tests are about the distribution's python3")
    if version != mine:
        pytest.skip(f"{SYSTEM_PYTHON} is Python {version}; this suite runs {mine}, whose "
                    f"site-packages the venv would share")
    venv = tmp_path_factory.mktemp("debian") / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    where = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    shared = [p for p in site.getsitepackages() if os.path.isdir(p)]
    (Path(where) / "nsbox_suite.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in shared))
    yield venv


def run_from(venv: Path, pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(str(venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
                        *args, timeout=240)


def test_debian_python_box_writes_under_usr_copy_on_write(debian_venv: Path,
                                                          pytester: pytest.Pytester) -> None:
    """A host box of a session run by Debian's python3 writes under /usr/local/lib and /usr
    into its own layer; the host's /usr is unchanged. The rootdir and the venv (under /tmp,
    which the box gets fresh) are still bound read-only (CONTRACT.md, Images: ``host``).

    Reference: moby daemon/graphdriver/overlay2 (the container's root is an overlay whose
    upperdir takes every write, whichever image directory it lands in)."""
    name = f"nsbox-cow-{secrets.token_hex(4)}"
    pytester.makepyfile(f"""
        import os, sys

        def test_inner(nsbox, pytestconfig):
            assert sys.base_prefix == "/usr" and sys.prefix != "/usr"  # the failing setup
            made = nsbox.run("mkdir /usr/local/lib/{name} && echo box > "
                             "/usr/local/lib/{name}/f && cat /usr/local/lib/{name}/f && "
                             "touch /usr/{name} && echo ok >> /usr/lib/os-release", check=True)
            assert made.stdout == "box\\n"
            assert nsbox.read_text("/usr/lib/os-release").endswith("ok\\n")
            assert not os.path.exists("/usr/local/lib/{name}")
            assert not os.path.exists("/usr/{name}")
            for path in (str(pytestconfig.rootpath), sys.prefix):
                denied = nsbox.run(["touch", path + "/{name}"])
                assert denied.returncode == 1, path
                assert "Read-only file system" in denied.stderr
            binds = [line.split()[4] for line in nsbox.read_text("/proc/1/mountinfo").splitlines()]
            assert "/usr" not in binds and "/usr/local" not in binds
            assert sys.prefix in binds and str(pytestconfig.rootpath) in binds
    """)
    result = run_from(debian_venv, pytester)
    result.assert_outcomes(passed=1)
    assert not os.path.exists(f"/usr/local/lib/{name}")
    with open("/usr/lib/os-release", encoding="utf-8") as f:
        assert not f.read().endswith("ok\n")


PROBE_PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "nsboxprobe"
version = "1.0"

[tool.setuptools]
py-modules = ["nsboxprobe"]
"""


def test_pip_install_in_a_from_host_step_lands_in_dist_packages(debian_venv: Path,
                                                                 pytester: pytest.Pytester) -> None:
    """``pip install`` as root with Debian's python3 in a ``FROM host`` RUN step installs to
    /usr/local/lib/python3.X/dist-packages, not ~/.local.

    References: Debian's python3.11 sysconfig patch (the ``posix_local`` scheme: root's
    installs go to /usr/local/lib/python3.X/dist-packages); pip
    src/pip/_internal/commands/install.py ``decide_user_install`` (it falls back to a user
    install, ~/.local, only when site-packages is not writable, which a read-only /usr was).
    """
    version = "%d.%d" % sys.version_info[:2]
    pkg = pytester.path / "fixtures_images" / "probe" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PROBE_PYPROJECT)
    (pkg / "nsboxprobe.py").write_text("WHO = 'probe'\n")
    (pkg.parent / "Containerfile").write_text(
        "FROM host\n"
        "COPY pkg /src/pkg\n"
        "RUN python3 -m pip install --no-index --no-build-isolation --no-cache-dir \\\n"
        "    --break-system-packages --root-user-action=ignore /src/pkg \\\n"
        "    && rm -rf /src/pkg/build /src/pkg/nsboxprobe.egg-info\n")
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.sandbox(image="probe")
        def test_inner(nsbox):
            where = nsbox.run(["python3", "-c", "import nsboxprobe; print(nsboxprobe.__file__)"],
                              check=True, cwd="/")
            assert where.stdout == "/usr/local/lib/python{version}/dist-packages/nsboxprobe.py\\n"
            assert not nsbox.exists("/root/.local")
    """)
    result = run_from(debian_venv, pytester, "-o", f"nsbox_store_dir={pytester.path / 'store'}")
    result.assert_outcomes(passed=1)
    assert not os.path.exists(f"/usr/local/lib/python{version}/dist-packages/nsboxprobe.py")


def test_the_pytool_example_with_debian_python(debian_venv: Path,
                                               pytester: pytest.Pytester) -> None:
    """The issue's failing input: examples/test_fixture_images.py's pytool test (a
    ``FROM host`` image whose RUN step pip-installs a tool), run by Debian's python3,
    built in a store of its own so nothing cached stands in for the build.

    Reference: as above (Debian's ``posix_local`` scheme; pip ``decide_user_install``)."""
    store = pytester.path / "store"
    example = REPO / "examples" / "test_fixture_images.py"
    result = run_from(debian_venv, pytester,
                      f"{example}::test_a_host_image_with_a_python_tool_installed_by_run",
                      "--rootdir", str(REPO), "-o", f"nsbox_store_dir={store}")
    result.assert_outcomes(passed=1)


# -- host_binds: which host paths are bound, which stay copy-on-write --------------------------
# Reference for the rule: overlayfs shows its lower directory's own filesystem only (Linux
# Documentation/filesystems/overlayfs.rst: layers are directories, mounts below them are not
# followed), and CONTRACT.md's ``host`` image (rootdir and Python visible, read-only).

@pytest.fixture
def python_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[SetPython]:
    """Set sys.prefix and sys.base_prefix; this checkout's folder is left out."""
    monkeypatch.setattr(plan, "PACKAGE_PARENT", None)

    def set_(prefix: str | Path, base: str | Path) -> None:
        monkeypatch.setattr(sys, "prefix", str(prefix))
        monkeypatch.setattr(sys, "base_prefix", str(base))
    yield set_


def ro(*paths: str | Path) -> list[Bind]:
    return [Bind(str(p), str(p), readonly=True) for p in paths]


def test_system_python_is_not_bound(python_at: SetPython, tmp_path: Path) -> None:
    """Debian's python3 itself: prefix and base_prefix are /usr, shown by the image."""
    python_at("/usr", "/usr")
    assert host_binds(None) == []
    assert host_binds(str(tmp_path)) == ro(tmp_path)


def test_venv_under_tmp_is_bound_its_base_in_usr_is_not(python_at: SetPython,
                                                        tmp_path: Path) -> None:
    """/tmp is fresh in a host box: a venv there must be bound to be seen at all."""
    venv = tmp_path / "venv"
    venv.mkdir()
    python_at(venv, "/usr")
    assert host_binds(None) == ro(venv)


@pytest.mark.parametrize("base", ["/usr/local", "/usr", "/opt", "/"])
def test_a_base_prefix_in_the_os_directories_stays_copy_on_write(python_at: SetPython,
                                                                 tmp_path: Path,
                                                                 base: str) -> None:
    """A Python built into /usr/local (or /opt, or /) is part of what the image shows."""
    if not os.path.isdir(base):
        os.makedirs(base)  # pragma: no cover - /usr/local and /opt exist on Debian
    rootdir = tmp_path / "project"
    rootdir.mkdir()
    python_at(base, base)
    assert host_binds(str(rootdir)) == ro(rootdir)


def test_a_venv_inside_the_rootdir_is_one_bind(python_at: SetPython, tmp_path: Path) -> None:
    venv = tmp_path / "project" / ".venv"
    venv.mkdir(parents=True)
    python_at(venv, "/usr")
    assert host_binds(str(tmp_path / "project")) == ro(tmp_path / "project")


@pytest.mark.parametrize("rootdir", ["/", "/usr", "/etc", "/var"])
def test_a_rootdir_that_is_an_os_directory_is_not_bound(python_at: SetPython, tmp_path: Path,
                                                        rootdir: str) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    python_at(venv, "/usr")
    assert host_binds(rootdir) == ro(venv)


def test_a_rootdir_holding_a_copy_on_write_python_is_not_bound(python_at: SetPython) -> None:
    """Binding a rootdir of /usr/local would make /usr/local's Python read-only again."""
    python_at("/usr/local", "/usr/local")
    assert host_binds("/usr/local") == []


def test_the_plugins_folder_follows_the_python_rule(python_at: SetPython,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """Installed into dist-packages it is shown; an editable checkout under /tmp is bound."""
    python_at("/usr", "/usr")
    monkeypatch.setattr(plan, "PACKAGE_PARENT", "/usr/lib")
    assert host_binds(None) == []
    monkeypatch.setattr(plan, "PACKAGE_PARENT", str(tmp_path))
    assert host_binds(None) == ro(tmp_path)


def test_host_shows_os_directories_not_masked_ones() -> None:
    _key, masked = builtin.host_mask_key("/")
    assert builtin.host_shows("/", masked)
    assert builtin.host_shows("/usr", masked) and builtin.host_shows("/usr/local/lib", masked)
    for hidden in ("/tmp", "/tmp/venv", "/root/.pyenv", "/home/u/venv", "/var/tmp/x", "/run"):
        assert not builtin.host_shows(hidden, masked), hidden
    assert builtin.host_shows("/var/lib", masked)  # var/tmp is masked, not all of /var
    assert builtin.host_shows("/usr/lib", ["usr/li"])  # a name prefix is not a path prefix


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)")
def test_a_prefix_on_a_mount_of_its_own_is_bound(tmp_path: Path) -> None:
    """The image's bottom layer is the root mount: a Python on another mount (here a tmpfs
    over /srv, in a private mount namespace) looks empty in a box, so it is bound."""
    script = (
        "import os, sys, subprocess\n"
        "subprocess.run(['mount', '-t', 'tmpfs', 'nsbox-test', '/srv'], check=True)\n"
        "os.mkdir('/srv/python')\n"
        "sys.prefix = sys.base_prefix = '/srv/python'\n"
        "from pytest_nsbox.runtime import plan\n"
        "from pytest_nsbox.images import builtin\n"
        "plan.PACKAGE_PARENT = None\n"
        "masked = builtin.host_mask_key('/')[1]\n"
        "print(builtin.host_shows('/srv', masked), builtin.host_shows('/usr', masked))\n"
        "print([b.source for b in plan.host_binds(None)])\n")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           script], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False True", "['/srv/python']"]
