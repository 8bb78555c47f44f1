"""The shared build cache (ini ``nsbox_image_cache``) and sharding with pytest-xdist.

A second machine is a second, empty store directory: it builds a fixtures image through
the cache with no step run. Sharding is xdist's: two ``--tx popen//...`` workers, each with
its own store (``env:NSBOX_STORE=...``, which execnet sets in the worker before pytest
starts there: execnet ``XSpec`` ``env:NAME=value``, ``multi.py``).

References: BuildKit's registry cache (docker docs "Cache storage backends", ``--cache-to
type=registry``: steps shared by digest through a registry; ``ignore-error``), the OCI
distribution spec (a step is an image manifest under a tag, spec.md "Pushing Manifests"),
pytest-xdist ``plugin.py`` (``-n N`` sets ``tx = ["popen"] * N``; ``--tx`` is repeatable).
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_nsbox.build.cache import STEP_KEY, TAG_PREFIX, repository, step_tag
from pytest_nsbox.errors import ImageError
from test_images import Fresh
from test_images_registry import Registry, free_port, needs_registry
from test_images_push import skopeo

pytestmark = pytest.mark.timeout(300)

APP = ("FROM busybox\n"
       "RUN echo built > /built && mkdir /data\n"
       "COPY app.sh /usr/bin/app\n"
       "RUN chmod 0755 /usr/bin/app && echo ok > /data/state\n")
APP_SH = "#!/bin/sh\necho app $(cat /data/state)\n"


def store_with_app(root: Path, cache: str | None, insecure: list[str]) -> Fresh:
    f = Fresh(root)
    f.image_dir("app", APP, **{"app.sh": APP_SH})
    f.store.image_cache = cache
    f.store.insecure_registries = insecure
    return f


def build_log(f: Fresh) -> list[str]:
    try:
        return Path(f.store.path("build.log")).read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "reg")
    yield reg
    reg.close()


@needs_registry
def test_a_second_empty_store_builds_through_the_cache_with_no_step_run(
        tmp_path: Path, registry: Registry) -> None:
    """BuildKit's registry cache: a step found in the cache by its key is pulled, not
    run. The first store builds ``app`` (three steps run) and pushes each step under tag
    ``nsbox-step-<key>``; the second, empty, runs none (its ``build.log`` records three
    pulls and no build) and gets the same layers and history; a third build there needs
    neither the registry nor any step (stopped registry: no warning, no step)."""
    cache = f"{registry.name}/nsbox/cache"
    first = store_with_app(tmp_path / "one", cache, [registry.name])
    second = store_with_app(tmp_path / "two", cache, [registry.name])
    try:
        built = first.store.build("app")
        assert [line.split()[4] for line in build_log(first)] == ["step=2/4", "step=3/4",
                                                                  "step=4/4"]
        assert any(" uploaded" in line for line in first.lines)
        assert not os.path.isdir(second.store.path("cache"))  # an empty store

        pulled = second.store.build("app")
        log = build_log(second)
        assert len(log) == 3 and all(" pulled image=app " in line for line in log), log
        assert not any(" build image=" in line for line in log)
        assert "nsbox: image 'app' ready (4 layers, 0 steps run" in "\n".join(second.lines)
        assert sum("(from the image cache" in line for line in second.lines) == 3
        assert pulled.layers[1:] == built.layers[1:]  # the steps' layers, by diff_id
        assert pulled.history == built.history  # with the times they were made
        with second.box("app") as box:
            assert box.run("app", check=True).stdout == "app ok\n"
            assert box.read_text("/built") == "built\n"

        registry.close()
        second.lines.clear()
        assert second.store.build("app").layers == pulled.layers
        assert not any("image cache" in line for line in second.lines), second.lines
        assert len(build_log(second)) == 3
    finally:
        first.close()
        second.close()


@needs_registry
def test_steps_built_before_the_cache_was_set_are_exported_and_skopeo_reads_them(
        tmp_path: Path, registry: Registry) -> None:
    """A step already in the local store is exported too (BuildKit exports the cache of
    the whole build, not only what ran): its tag is checked with ``HEAD`` and, missing,
    pushed; once known there it is not checked again. Each step is an ordinary OCI image
    of one layer, annotated with its key, which ``skopeo`` inspects and copies."""
    local = store_with_app(tmp_path / "local", None, [registry.name])
    try:
        image = local.store.build("app")
        assert len(build_log(local)) == 3
        cache = f"{registry.name}/steps"
        local.store.image_cache = cache
        local.lines.clear()
        assert local.store.build("app").id == image.id
        assert len(build_log(local)) == 3  # nothing ran again
        keys = sorted(name.split(".")[0] for name in os.listdir(local.store.path("cache")))
        assert len(keys) == 3
        layers = []
        for key in keys:
            ref = f"docker://{registry.name}/steps:{step_tag(key)}"
            info = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", ref).stdout)
            assert info["annotations"] == {STEP_KEY: key}
            assert len(info["layers"]) == 1
            layers.append(info["layers"][0]["digest"])
            config = json.loads(skopeo("inspect", "--tls-verify=false", "--config",
                                       ref).stdout)
            assert config["history"][0]["created_by"].split()[0] in ("RUN", "COPY")
        copied = tmp_path / "step"
        skopeo("copy", "--src-tls-verify=false",
               f"docker://{registry.name}/steps:{step_tag(keys[0])}", f"oci:{copied}:s")
        assert (copied / "blobs/sha256" / layers[0][7:]).is_file()
        # Known to be there now: a build checks nothing.
        local.lines.clear()
        registry.close()
        local.store.build("app")
        assert not any("image cache" in line for line in local.lines), local.lines
    finally:
        local.close()


def test_an_unreachable_cache_warns_once_and_the_build_goes_on(tmp_path: Path) -> None:
    """BuildKit's ``ignore-error=true``: a cache that cannot be reached neither fails the
    build nor is asked again in it: one line for the lookup, one for the export."""
    port = free_port()
    f = store_with_app(tmp_path / "s", f"127.0.0.1:{port}/cache", [f"127.0.0.1:{port}"])
    try:
        image = f.store.build("app")
        assert len(image.layers) == 4 and len(build_log(f)) == 3
        warnings = [line for line in f.lines if "image cache" in line]
        assert len(warnings) == 2, warnings
        assert warnings[0].startswith(f"nsbox: image cache 127.0.0.1:{port}/cache: lookup "
                                      f"failed, building without it: registry 127.0.0.1:"
                                      f"{port}: cannot reach")
        assert " export failed, " in warnings[1]
    finally:
        f.close()


@pytest.mark.parametrize("value, problem", [
    ("nope", "not REGISTRY/REPO"),
    ("cache/steps", "not REGISTRY/REPO"),
    ("127.0.0.1:5000/steps:v1", "a repository without tag or digest"),
    ("127.0.0.1:5000/Steps", "is not a repository name"),
])
def test_the_cache_must_be_a_registry_repository(value: str, problem: str) -> None:
    """``REGISTRY/REPO``: a reference that names its registry (distribution/reference's
    rule: a first part with ``.`` or ``:``, or ``localhost``), without tag or digest."""
    with pytest.raises(ImageError, match=problem):
        repository(value)
    assert step_tag("a" * 64) == TAG_PREFIX + "a" * 64 and len(step_tag("a" * 64)) <= 128


def test_a_bad_cache_option_is_a_usage_error_naming_it(pytester: pytest.Pytester) -> None:
    """pytest-timeout's rule: a bad option value is reported once, naming where it came
    from, before any test runs."""
    pytester.makeini("[pytest]\nnsbox_image_cache = cache/steps\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini nsbox_image_cache = 'cache/steps': not REGISTRY/REPO*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           "--nsbox-image-cache=127.0.0.1:5000/c:v1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nsbox-image-cache='127.0.0.1:5000/c:v1': a repository "
                                 "without tag or digest*"])


SUITE = """
import os
import pytest

@pytest.mark.sandbox(image="app")
@pytest.mark.parametrize("n", range(4))
def test_app(nsbox, n):
    assert nsbox.run("app", check=True).stdout == "app ok\\n"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ["RESULTS"], f"{worker}-{n}"), "w") as f:
        f.write(os.environ["NSBOX_STORE"])
"""


@needs_registry
def test_xdist_popen_workers_with_stores_of_their_own_share_the_cache(
        pytester: pytest.Pytester, tmp_path: Path, registry: Registry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sharding as pytest-xdist does it: ``--tx popen//python=...//env:NSBOX_STORE=...``
    twice gives two worker processes, each with its own image store (standing in for two
    machines), ``--dist load`` spreads the tests. A first run (one process, its own
    store) builds ``app`` and fills the cache; then both workers get ``app`` from the
    cache, running no step, and their tests with boxes pass."""
    pytester.makeini(f"[pytest]\nnsbox_image_cache = {registry.name}/ci/cache\n"
                     f"nsbox_insecure_registries = {registry.name}\n")
    folder = pytester.path / "fixtures_images" / "app"
    folder.mkdir(parents=True)
    (folder / "Containerfile").write_text(APP)
    (folder / "app.sh").write_text(APP_SH)
    pytester.makepyfile(test_suite=SUITE)
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setenv("RESULTS", str(results))
    stores = [tmp_path / name for name in ("warm", "w1", "w2")]
    monkeypatch.setenv("NSBOX_STORE", str(stores[0]))
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=4)
    assert len((stores[0] / "build.log").read_text().splitlines()) == 3
    for path in results.iterdir():
        path.unlink()

    tx = [f"popen//python={sys.executable}//env:NSBOX_STORE={store}" for store in stores[1:]]
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--dist", "load",
                                           "--tx", tx[0], "--tx", tx[1])
    result.assert_outcomes(passed=4)
    seen = {path.name.split("-")[0]: path.read_text() for path in results.iterdir()}
    assert seen == {"gw0": str(stores[1]), "gw1": str(stores[2])}
    for store in stores[1:]:
        log = (store / "build.log").read_text().splitlines()
        assert len(log) == 3 and all(" pulled image=app " in line for line in log), log
