"""``isolate=True`` / ``--nsbox-isolate``: the test body itself runs inside a box.

The box runs a second pytest on just that test (the rootdir and this Python are visible
read-only in a ``host`` image box), writes a JUnit XML report inside the box, and the
outer test takes its outcome and its report text from there. The inner pytest knows it is
inside (``NSBOX_ISOLATED=1``) so it neither isolates again nor tries to make boxes.
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .runtime.box import Box

INNER_ENV = "NSBOX_ISOLATED"
REPORT = "/tmp/nsbox-isolated-result.xml"


def inner() -> bool:
    import os

    return os.environ.get(INNER_ENV) == "1"


def command(item: pytest.Item) -> list[str]:
    config = item.config
    argv = [sys.executable, "-m", "pytest", item.nodeid, "-p", "no:cacheprovider",
            "--rootdir", str(config.rootpath), f"--junitxml={REPORT}", "-q",
            "-o", "junit_logging=all", "-p", "no:randomly"]
    if config.inipath is not None:
        argv += ["-c", str(config.inipath)]
    return argv


def run_inside(box: Box, item: pytest.Item, timeout: float | None) -> None:
    """Run the item in ``box`` and turn the inner outcome into this test's outcome."""
    if not box.image.from_host_os:
        pytest.fail(f"{item.nodeid}: isolate=True runs this Python inside the box, so it needs "
                    f"the 'host' image; got image={box.spec.image!r}", pytrace=False)
    env = {"PYTHONDONTWRITEBYTECODE": "1", INNER_ENV: "1", "HOME": "/root",
           "PYTHONPATH": ":".join(p for p in sys.path if p)}
    result = box.run(command(item), env=env, cwd=str(item.config.rootpath), timeout=timeout)
    if result.timed_out:
        pytest.fail(f"{item.nodeid}: the isolated test timed out after {timeout} s", pytrace=False)
    xml = box.read_text(REPORT) if box.exists(REPORT) else None
    if xml is None:
        pytest.fail(f"{item.nodeid}: the isolated pytest ended with status {result.returncode} "
                    f"and wrote no report:\n{result.stdout}{result.stderr}", pytrace=False)
    outcome, text = parse_report(xml)
    if outcome == "skipped":
        # Reported at the test's own location, as a skip inside the test would be.
        raise pytest.skip.Exception(text or "skipped inside the box", _use_item_location=True)
    if outcome in ("failed", "error"):
        pytest.fail(f"(isolated in box {box.name!r})\n{text}", pytrace=False)


def parse_report(xml: str) -> tuple[str, str]:
    """``(outcome, text)`` of the single test case in a JUnit XML report."""
    root = ET.fromstring(xml)
    case = root.find(".//testcase")
    if case is None:
        return "error", "the isolated pytest collected no test"
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            first, second = ("message", "text") if tag == "skipped" else ("text", "message")
            text = ((node.get(first) if first == "message" else node.text)
                    or (node.text if second == "text" else node.get("message")) or "").strip()
            return {"failure": "failed"}.get(tag, tag), text
    return "passed", ""
