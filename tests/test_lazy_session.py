"""A session that uses no box pays nothing: no image store, no gc pass, no zygote.

Installing the plugin must not slow a suite that never asks for a box. The image store,
the garbage collection of dead owners' leftovers and the zygote wait for the first use of
``nsbox``, ``nsbox_factory``, ``nsbox_images`` or isolate; and ``pytest --help`` imports
none of the runtime (heavy imports inside hooks and fixtures, as pytest-xdist's
``plugin.py`` keeps them so its ``--help`` stays fast).

What is checked, in a pytest subprocess with a run directory of its own (``NSBOX_RUN``):
the modules in ``sys.modules`` when the session finishes (a conftest hook writes them), and
``<run>/gc.lock``, which every gc pass creates and locks (``gc.collect``). A session with
one box is the control: it must show all of them.
"""
from __future__ import annotations

import json
import os

import pytest

HEAVY = ("pytest_nsbox.images.store", "pytest_nsbox.sweep", "pytest_nsbox.runtime.engine",
         "pytest_nsbox.runtime.box", "pytest_nsbox.cgroups", "pytest_nsbox.runtime.plan")

RECORDER = """
import json
import os
import sys


def _record(config):
    registry = getattr(sys, "_pytest_nsbox_zygotes", None)
    zygotes = [c.proc.pid for c in registry["clients"].values()] if registry else []
    with open({out!r}, "w") as f:
        json.dump({{"modules": sorted(m for m in sys.modules if m.startswith("pytest_nsbox")),
                   "zygotes": zygotes}}, f)


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        _record(session.config)


def pytest_unconfigure(config):
    if not os.path.exists({out!r}):  # --help has no session
        _record(config)
"""

NO_BOX_TESTS = """
import pytest


@pytest.mark.parametrize("i", range(3))
def test_plain(i, tmp_path):
    assert i >= 0


@pytest.mark.sandbox(memory="64M")
def test_marked_but_no_box():
    pass


class TestAClass:
    def test_method(self):
        pass
"""


def _session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tests: str,
             *args: str) -> tuple[dict[str, list[str]], str]:
    out = str(pytester.path / "modules.json")
    run = str(pytester.path / "run")
    monkeypatch.setenv("NSBOX_RUN", run)
    pytester.makeconftest(RECORDER.format(out=out))
    pytester.makepyfile(test_session=tests)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), \
        result.stdout.str()
    with open(out, encoding="utf-8") as f:
        return json.load(f), run


@pytest.mark.parametrize("extra", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_session_without_boxes_loads_no_store_and_runs_no_gc(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, extra: list[str]) -> None:
    """Tests with no box (one with a ``sandbox`` marker but no box fixture): the image
    store and gc modules are never imported, gc never ran (no ``gc.lock`` in the run
    directory), and no zygote was started."""
    if extra:
        pytest.importorskip("xdist")
    seen, run = _session(pytester, monkeypatch, NO_BOX_TESTS, *extra)
    loaded = [m for m in seen["modules"] if m.startswith(HEAVY)]
    assert loaded == [], f"imported by a session with no box: {loaded}"
    assert seen["zygotes"] == []
    assert not os.path.exists(os.path.join(run, "gc.lock")), "gc ran"


@pytest.mark.skipif(os.geteuid() != 0, reason="boxes need root")
@pytest.mark.parametrize("first_use", ["nsbox", "nsbox_factory", "nsbox_images"])
def test_the_first_box_brings_store_and_gc(pytester: pytest.Pytester,
                                           monkeypatch: pytest.MonkeyPatch,
                                           first_use: str) -> None:
    """The control: the first use of a box fixture (or of the image store) imports the
    store and runs gc once, before the box."""
    body = {"nsbox": "assert nsbox.run(['true']).returncode == 0",
            "nsbox_factory": "assert nsbox_factory(image='busybox').run(['true']).returncode == 0",
            "nsbox_images": "assert nsbox_images.get('busybox').layers"}[first_use]
    tests = NO_BOX_TESTS + f"""

@pytest.mark.sandbox(image="busybox")
def test_first_use({first_use}):
    {body}
"""
    seen, run = _session(pytester, monkeypatch, tests)
    assert "pytest_nsbox.images.store" in seen["modules"]
    assert "pytest_nsbox.sweep" in seen["modules"]
    assert os.path.exists(os.path.join(run, "gc.lock")), "gc did not run"


def test_help_imports_no_runtime(pytester: pytest.Pytester,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``pytest --help`` lists our options without importing the runtime."""
    seen, _run = _session(pytester, monkeypatch, NO_BOX_TESTS, "--help")
    loaded = [m for m in seen["modules"] if m.startswith(HEAVY)]
    assert loaded == []
    assert "pytest_nsbox.plugin" in seen["modules"]

