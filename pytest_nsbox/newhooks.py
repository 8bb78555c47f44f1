"""Hook specifications of pytest-nsbox; registered by the plugin in ``pytest_addhooks``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .model.image import Image
    from .runtime.box import Box
    from .model.spec import BoxSpec


def pytest_nsbox_box_spec(spec: BoxSpec, item: pytest.Item) -> None:
    """Change a box's spec (its attributes are the marker's keys) before the box starts."""


def pytest_nsbox_box_started(box: Box) -> None:
    """A box of the current test is running."""


def pytest_nsbox_box_finished(box: Box, outcome: str) -> None:
    """A box is about to be torn down; ``outcome`` is the test's: passed, failed or skipped."""


@pytest.hookspec(firstresult=True)
def pytest_nsbox_resolve_image(ref: str) -> Image | Any | None:
    """Return an image for a reference the store does not know, or None."""
