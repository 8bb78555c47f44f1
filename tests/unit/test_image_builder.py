"""images.build.ImageBuilder: the image store builds Containerfiles through the builder it
is given (the builder, ``pytest_nsbox/build``, is above the runtime its RUN steps use, the
store below it), and every Engine gives its store the one ``pytest_nsbox/__init__.py``
installs.

Written from CONTRACT.md ("Images": a ``fixtures_images/NAME/`` folder defines image
``NAME``; ``nsbox_images.build(path_or_name, build_args=None)``; ``Box(image=...)`` outside
pytest takes the marker's keys) and issue 10 ("L4 build/: Containerfile build and commit,
above the runtime they use"; a store without a builder asked to build raises a clear
``ImageError``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_nsbox.build import ContainerfileBuilder
from pytest_nsbox.errors import ImageError
from pytest_nsbox.images.build import default_builder
from pytest_nsbox.images.store import ImageStore
from pytest_nsbox.model.image import Image
from pytest_nsbox.runtime.engine import Engine
from pytest_nsbox.state import StateDirs


class Recorder:
    """An ``ImageBuilder`` that records what it is asked and builds nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def build(self, store: ImageStore, path_or_name: str, *, tag: str | None,
              build_args: Mapping[str, str], target: str | None) -> Image:
        self.calls.append((store, path_or_name, tag, dict(build_args), target))
        return Image(ref=tag or path_or_name, id="sha256:" + "1" * 64, layers=(),
                     layer_dirs=(), store=store)


def dirs_in(tmp_path: Path) -> StateDirs:
    return StateDirs(store=str(tmp_path / "store"), run=str(tmp_path / "run"))


def with_fixture(store: ImageStore, tmp_path: Path) -> ImageStore:
    (tmp_path / "fixtures_images" / "app").mkdir(parents=True)
    (tmp_path / "fixtures_images" / "app" / "Containerfile").write_text("FROM scratch\n")
    store.images_dir = str(tmp_path / "fixtures_images")
    return store


def test_a_store_without_a_builder_refuses_to_build_naming_why(tmp_path: Path) -> None:
    """A store made without a builder finds the fixtures image, and says it cannot build
    it (and which stores can), by ``build`` and by ``get``."""
    store = with_fixture(ImageStore(dirs_in(tmp_path)), tmp_path)
    fixture = tmp_path / "fixtures_images" / "app"
    for ask, named in ((lambda: store.build("app"), "app"), (lambda: store.get("app"), fixture)):
        with pytest.raises(ImageError) as info:
            ask()
        text = str(info.value)
        assert text.startswith(f"image '{named}': this image store ({tmp_path / 'store'}) was "
                               f"made without a Containerfile builder, so it cannot build; ")
        assert "nsbox_images" in text


def test_the_store_gives_its_builder_the_checked_build_args(tmp_path: Path) -> None:
    """``build(path_or_name, build_args=...)`` over the store's own ``build_args``
    (``--nsbox-build-arg``, ini ``nsbox_build_args``), which the call's win; a fixtures
    image resolved by ``get`` is built under its name as tag."""
    recorder = Recorder()
    store = with_fixture(ImageStore(dirs_in(tmp_path), builder=recorder), tmp_path)
    store.build_args = {"A": "store", "B": "store"}
    image = store.build("app", build_args={"B": "call"}, target="final")
    assert recorder.calls == [(store, "app", None, {"A": "store", "B": "call"}, "final")]
    assert image.ref == "app"
    fixture = str(tmp_path / "fixtures_images" / "app")
    assert store.get("app").ref == "app"
    assert recorder.calls[-1] == (store, fixture, "app", {"A": "store", "B": "store"}, None)


@pytest.mark.parametrize(("build_args", "match"), [
    ({"": "x"}, "'' is not an ARG name"),
    ({"V": 1}, "V=1: values are strings"),
    (["V=1"], "not a mapping of ARG names to values"),
])
def test_bad_build_args_are_refused_before_the_builder_runs(
        tmp_path: Path, build_args: Any, match: str) -> None:
    """docker/cli ``opts.ValidateEnv``: a build arg is a name and a string value."""
    recorder = Recorder()
    store = with_fixture(ImageStore(dirs_in(tmp_path), builder=recorder), tmp_path)
    with pytest.raises(ImageError, match=match):
        store.build("app", build_args=build_args)
    assert recorder.calls == []


def test_engines_give_their_store_the_installed_builder(tmp_path: Path) -> None:
    """Importing the package installs the Containerfile builder (its one wiring point); an
    Engine given no builder passes that one to its store, one given another (or None)
    passes that."""
    installed = default_builder()
    assert isinstance(installed, ContainerfileBuilder)
    assert Engine(dirs=dirs_in(tmp_path)).store.builder is installed
    recorder = Recorder()
    assert Engine(dirs=dirs_in(tmp_path), builder=recorder).store.builder is recorder
    assert Engine(dirs=dirs_in(tmp_path), builder=None).store.builder is None
