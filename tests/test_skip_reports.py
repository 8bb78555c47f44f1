"""A host that cannot run boxes: the skip is reported at the test's own line, and
``--nsbox-require`` says why once.

The host is made unfit in the pytest subprocess only, by a conftest that makes
``runtime.engine._has_overlay`` answer False, so ``check_host`` raises its real
``HostNotSupported`` (the overlayfs fix-it line) exactly as on a kernel without overlayfs.

References:
- pytest ``_pytest/reports.py`` ``TestReport.from_item_and_call``: a skip raised with
  ``_use_item_location=True`` is located at ``item.reportinfo()``, the test function's
  first line (its first decorator), which is where ``@pytest.mark.skipif`` skips are shown
  (``_pytest/skipping.py`` ``pytest_runtest_setup`` raises
  ``skip.Exception(reason, _use_item_location=True)``); without it the location is the
  frame that raised it, here inside the plugin.
- pytest ``_pytest/nodes.py`` ``Node._repr_failure_py``: a ``pytest.fail(..., pytrace=False)``
  is shown as its message alone, but with the chain of ``__context__`` exceptions unless
  it is raised outside the ``except`` block (or ``from None``).
"""
from __future__ import annotations

import os
import re

import pytest

REASON = ("nsbox: nsbox needs overlayfs, which this kernel lacks; load it with `modprobe overlay`"
          "; `python -m pytest_nsbox doctor` shows what this host lacks")

UNFIT_HOST = """
def pytest_configure(config):
    import pytest_nsbox.runtime.engine as host

    host._has_overlay = lambda: False
"""

TESTS = """\
import pytest


def test_fixture(nsbox):
    pass


def test_factory_in_body(nsbox_factory):
    x = 1
    nsbox_factory(image="busybox")


@pytest.mark.sandbox(image="busybox")
@pytest.mark.parametrize("n", [1, 2])
def test_marked_and_parametrized(nsbox, n):
    pass


class TestInAClass:
    @pytest.mark.sandbox(memory="64M")
    def test_method(self, nsbox_factory):
        nsbox_factory()


@pytest.mark.sandbox(isolate=True)
def test_isolated():
    pass
"""


def _first_lines(source: str) -> dict[str, int]:
    """Test name: 1-based line of its first decorator, else of its ``def`` (what pytest
    reports for a ``skipif`` on it)."""
    lines = source.splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = re.match(r"\s*def (test_\w+)", line)
        if m:
            first = i
            while first > 0 and lines[first - 1].strip().startswith("@"):
                first -= 1
            out[m.group(1)] = first + 1
    return out


@pytest.fixture
def unfit(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(UNFIT_HOST)
    pytester.makepyfile(test_unfit=TESTS)
    return pytester


@pytest.mark.parametrize("extra", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_skip_is_reported_at_the_tests_own_line(unfit: pytest.Pytester,
                                                extra: list[str]) -> None:
    """Each box a test asks for (the ``nsbox`` fixture at setup, ``nsbox_factory()`` in
    the body, a class method, a parametrized test, ``isolate=True``) skips at the test's
    own file:line, under xdist too; never at a line of ``pytest_nsbox/``."""
    if extra:
        pytest.importorskip("xdist")
    result = unfit.runpytest_subprocess("-p", "no:cacheprovider", "-rs", *extra)
    result.assert_outcomes(skipped=6)
    lines = _first_lines(TESTS)
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert not [line for line in skipped if f"pytest_nsbox{os.sep}" in line], skipped
    expected = {lines[name] for name in ("test_fixture", "test_factory_in_body",
                                         "test_marked_and_parametrized", "test_method",
                                         "test_isolated")}
    found = set()
    for line in skipped:
        m = re.match(r"SKIPPED \[(\d+)\] test_unfit\.py:(\d+): (.*)$", line)
        assert m, line
        assert m.group(3) == REASON
        found.add(int(m.group(2)))
    assert found == expected


def test_skip_with_nsbox_isolate_option(pytester: pytest.Pytester) -> None:
    """``--nsbox-isolate`` on an unfit host: an unmarked test skips at its own line."""
    pytester.makeconftest(UNFIT_HOST)
    pytester.makepyfile(test_plain="import os\n\n\ndef test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", "--nsbox-isolate")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED [1] test_plain.py:4: {REASON}"])


@pytest.mark.parametrize("how", ["--nsbox-require", "ini nsbox_require = true"])
def test_require_prints_the_reason_once(unfit: pytest.Pytester, how: str) -> None:
    """``--nsbox-require`` (or the ini option) fails each test with the reason alone:
    once per test, not chained under the ``HostNotSupported`` it was made from, and with
    no traceback into the plugin."""
    args = ["-p", "no:cacheprovider", "-rN"]
    if how.startswith("ini"):
        unfit.makeini("[pytest]\nnsbox_require = true\n")
    else:
        args.append(how)
    result = unfit.runpytest_subprocess(*args)
    # the fixture and an isolated test's box fail at setup: errors
    result.assert_outcomes(failed=2, errors=4)
    text = result.stdout.str()
    wanted = f"{REASON} (--nsbox-require is set)"
    assert text.count(REASON) == 6, text
    assert text.count(wanted) == 6, text
    assert "During handling of the above exception" not in text
    assert "direct cause of the following exception" not in text
    assert "HostNotSupported" not in text
    assert f"{os.sep}pytest_nsbox{os.sep}" not in text
