"""isolate=True and --nsbox-isolate: the test body runs inside a box."""
from __future__ import annotations

import pytest

ARGS = ("-p", "no:cacheprovider")


def test_isolated_body_runs_in_a_box(pytester):
    pytester.makepyfile("""
        import os, socket
        import pytest

        @pytest.mark.sandbox(isolate=True, hostname="inner", memory="256M")
        def test_inside():
            assert socket.gethostname() == "inner"
            assert os.listdir("/home") == []
            assert not os.path.exists("/root/.bash_history")
            with open("/etc/nsbox-isolated", "w") as f:
                f.write("only in the box")

        def test_outside():
            assert not os.path.exists("/etc/nsbox-isolated")
            assert socket.gethostname() != "inner"

        @pytest.mark.sandbox(isolate=True)
        def test_fails_inside():
            assert 1 + 1 == 3, "inner arithmetic"

        @pytest.mark.sandbox(isolate=True)
        def test_skips_inside():
            pytest.skip("not today")

        @pytest.mark.sandbox(isolate=True, image="busybox")
        def test_wrong_image():
            pass
    """)
    result = pytester.runpytest_subprocess("-rs", *ARGS)
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*(isolated in box 'isolated-test_fails_inside')*",
                                 "*inner arithmetic*",
                                 "*isolate=True runs this Python inside the box, so it needs the "
                                 "'host' image; got image='busybox'*",
                                 "SKIPPED ?1? test_isolated_body_runs_in_a_box.py:*: not today"])


def test_isolate_option_isolates_every_test(pytester):
    pytester.makepyfile("""
        import socket

        def test_a():
            assert socket.gethostname().startswith("isolated-test-a") or \\
                socket.gethostname().startswith("isolated-test_a")

        def test_b(tmp_path):
            (tmp_path / "x").write_text("fine")
    """)
    result = pytester.runpytest_subprocess("--nsbox-isolate", *ARGS)
    result.assert_outcomes(passed=2)


def test_boxes_cannot_be_made_inside_an_isolated_test(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(isolate=True)
        def test_nested(nsbox_factory):
            nsbox_factory()
    """)
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*already runs inside a box (isolate)*"])
