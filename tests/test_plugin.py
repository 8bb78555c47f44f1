"""The plugin as users meet it: markers, fixtures, hooks, options and reports (pytester)."""
from __future__ import annotations

import os

import pytest

ARGS = ("-p", "no:cacheprovider")


@pytest.mark.parametrize("kwargs, line", [
    ("memory='lots'", "sandbox(memory='lots'): not a size; use e.g. '64M'"),
    ("cpus=-1", "sandbox(cpus=-1): must be more than 0; use e.g. 0.5"),
    ("network='wifi'", "sandbox(network='wifi'): not a network mode; use e.g. 'none', "
                       "'private' or 'host'"),
    ("memroy='64M'", "sandbox(memroy='64M'): unknown key; use e.g. memory='64M'"),
])
def test_a_bad_marker_fails_that_test_at_setup_with_one_line(pytester, kwargs, line):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.sandbox({kwargs})
        def test_bad(nsbox):
            pass

        def test_unrelated():
            pass
    """)
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*test_a_bad_marker*.py::test_bad: {line}"])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*pytest_nsbox/*")


def test_a_bad_marker_fails_even_without_the_fixture(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(pids='many')
        def test_bad():
            pass
    """)
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*::test_bad: sandbox(pids='many'): *; use e.g. 64"])


def test_closest_marker_wins_key_by_key_and_ini_gives_defaults(pytester):
    pytester.makeini("""
        [pytest]
        nsbox_image = busybox
        nsbox_memory = 32M
    """)
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.sandbox(hostname="module", pids=30)

        @pytest.mark.sandbox(hostname="klass")
        class TestIt:
            @pytest.mark.sandbox(memory="48M")
            def test_merge(self, nsbox):
                assert nsbox.spec.image == "busybox"
                assert nsbox.run("hostname", check=True).stdout.strip() == "klass"
                stats = nsbox.stats()
                assert stats.memory_limit == 48 * 1024**2
                assert nsbox.spec.pids == 30

        def test_ini_default(nsbox):
            assert nsbox.spec.memory == 32 * 1024**2
            assert nsbox.run("hostname", check=True).stdout.strip() == "module"
    """)
    pytester.runpytest_subprocess(*ARGS).assert_outcomes(passed=2)


def test_bad_ini_default_names_the_ini_option(pytester):
    pytester.makeini("""
        [pytest]
        nsbox_memory = lots
    """)
    pytester.makepyfile("""
        def test_it(nsbox):
            pass
    """)
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ini(nsbox_memory='lots'): not a size; use e.g. '64M'"])


def test_factory_boxes_are_named_and_all_torn_down(pytester, run_dir):
    pytester.makepyfile("""
        def test_two(nsbox_factory):
            a = nsbox_factory(image="busybox", name="alpha")
            b = nsbox_factory(image="busybox", name="beta", memory="32M")
            assert a.name == "alpha" and b.name == "beta"
            assert a.run("hostname", check=True).stdout.strip() == "alpha"
            assert b.stats().memory_limit == 32 * 1024**2
            a.write_text("/tmp/only-a", "x")
            assert not b.exists("/tmp/only-a")
            print("IDS", a.id, b.id)
    """)
    result = pytester.runpytest_subprocess("-s", *ARGS)
    result.assert_outcomes(passed=1)
    ids = next(line for line in result.stdout.lines if "IDS" in line).split("IDS ")[1].split()
    assert len(ids) == 2
    for box_id in ids:
        assert not os.path.exists(os.path.join(run_dir, box_id))


def test_hooks_see_and_change_the_spec(pytester):
    pytester.makeconftest("""
        events = []

        def pytest_nsbox_box_spec(spec, item):
            spec.hostname = "from-hook-" + item.name.replace("_", "-")
            spec.memory = "40M"

        def pytest_nsbox_box_started(box):
            events.append(("started", box.name))

        def pytest_nsbox_box_finished(box, outcome):
            events.append(("finished", box.name, outcome))
            assert box.run("true").returncode == 0, "the box is still alive here"

        def pytest_sessionfinish(session):
            print("EVENTS", events)
    """)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="busybox", name="web")
        def test_x(nsbox):
            assert nsbox.run("hostname", check=True).stdout.strip() == "from-hook-test-x"
            assert nsbox.stats().memory_limit == 40 * 1024**2
    """)
    result = pytester.runpytest_subprocess("-s", *ARGS)
    result.assert_outcomes(passed=1)
    assert "EVENTS [('started', 'web'), ('finished', 'web', 'passed')]" in result.stdout.str()


def test_resolve_image_hook_supplies_unknown_refs(pytester):
    pytester.makeconftest("""
        def pytest_nsbox_resolve_image(ref):
            if ref == "my-busybox":
                from pytest_nsbox.runtime.engine import default_engine
                return default_engine().store.get("busybox")
    """)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="my-busybox")
        def test_x(nsbox):
            assert nsbox.run("busybox true").returncode == 0

        @pytest.mark.sandbox(image="nope")
        def test_unknown(nsbox):
            pass
    """)
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*image 'nope': unknown; the built-in images are*"])


def test_unsupported_host_skips_with_one_reason_or_errors_when_required(pytester):
    pytester.makeconftest("""
        import pytest_nsbox.runtime.engine as host
        from pytest_nsbox.errors import HostNotSupported

        def refuse():
            raise HostNotSupported("nsbox needs root; run pytest as root")

        host.check_host = refuse
    """)
    pytester.makepyfile("""
        def test_needs_box(nsbox):
            pass

        def test_plain():
            pass
    """)
    result = pytester.runpytest_subprocess("-rs", *ARGS)
    result.assert_outcomes(passed=1, skipped=1)
    doctor = "`python -m pytest_nsbox doctor` shows what this host lacks"
    result.stdout.fnmatch_lines(
        [f"SKIPPED * nsbox: nsbox needs root; run pytest as root; {doctor}"])
    required = pytester.runpytest_subprocess("--nsbox-require", *ARGS)
    required.assert_outcomes(passed=1, errors=1)
    required.stdout.fnmatch_lines(
        [f"*nsbox needs root; run pytest as root; {doctor} (--nsbox-require is set)"])


def test_failure_report_lists_the_boxs_commands(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="busybox", name="svc")
        def test_fails(nsbox):
            nsbox.run("echo building; echo 'warning: low disk' >&2")
            nsbox.run("echo boom >&2; exit 3")
            assert False, "see the box"

        @pytest.mark.sandbox(image="busybox")
        def test_passes(nsbox):
            nsbox.run("echo fine")
    """)
    result = pytester.runpytest_subprocess(*ARGS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*- nsbox boxes -*",
        "box 'svc' (image=busybox *, id *):",
        "  $ echo building; echo 'warning: low disk' >&2  -> exit 0 in *",
        "    stderr: warning: low disk",
        "  $ echo boom >&2; exit 3  -> exit 3 in *",
        "    stderr: boom",
    ])
    result.stdout.no_fnmatch_line("*echo fine*")


def test_keep_failed_keeps_and_prints_the_read_write_layer(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="busybox")
        def test_fails(nsbox):
            nsbox.run("echo evidence > /tmp/evidence")
            assert False

        @pytest.mark.sandbox(image="busybox")
        def test_passes(nsbox):
            nsbox.run("echo ok > /tmp/ok")
    """)
    result = pytester.runpytest_subprocess("--nsbox-keep=failed", *ARGS)
    result.assert_outcomes(passed=1, failed=1)
    lines = [line for line in result.stdout.lines if "read-write layer kept at" in line]
    assert len(lines) == 1 and "test_fails" in lines[0]
    kept = lines[0].rsplit(" ", 1)[1]
    try:
        with open(os.path.join(kept, "tmp", "evidence")) as f:
            assert f.read() == "evidence\n"
    finally:
        from pytest_nsbox.kernel.fs import remove_tree

        remove_tree(os.path.dirname(kept))


def test_keep_rejects_a_bad_choice(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--nsbox-keep=sometimes", *ARGS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid choice: 'sometimes'*"])


def test_box_works_outside_pytest(pytester):
    script = pytester.makepyfile(run_me="""
        import pytest_nsbox

        with pytest_nsbox.Box(image="busybox", memory="64M", name="script") as box:
            print(box.run("echo $HOSTNAME", check=True).stdout.strip())
            print(box.stats().memory_limit)
        print(box.closed)
        try:
            box.run("true")
        except pytest_nsbox.BoxClosed as exc:
            print("closed:", exc)
        try:
            pytest_nsbox.Box(image="busybox", memory="lots")
        except pytest_nsbox.SpecError as exc:
            print(exc)
    """)
    result = pytester.run(__import__("sys").executable, str(script))
    assert result.ret == 0, result.stderr.str()
    assert result.stdout.lines == [
        "script", str(64 * 1024**2), "True", "closed: box 'script' is closed",
        "Box(memory='lots'): not a size; use e.g. '64M'"]


def test_help_lists_the_options(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--nsbox-require*", "*--nsbox-keep=*", "*nsbox_image*"])


def test_warm_pool_prepares_the_next_tests_boxes(pytester):
    pytester.makeini("""
        [pytest]
        nsbox_pool = 2
    """)
    pytester.makeconftest("""
        specs = []

        def pytest_nsbox_box_spec(spec, item):
            specs.append(item.name)

        def pytest_sessionfinish(session):
            pool = session.config.stash[__import__("pytest_nsbox.plugin").plugin._settings_key]._pool
            print("POOL", pool.hits, pool.misses, "SPECS", sorted(specs))
    """)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="busybox", hostname="one")
        def test_one(nsbox):
            assert nsbox.run("hostname").stdout.strip() == "one"

        @pytest.mark.sandbox(image="busybox", hostname="two", memory="32M")
        def test_two(nsbox):
            assert nsbox.run("hostname").stdout.strip() == "two"
            assert nsbox.stats().memory_limit == 32 * 1024**2
            nsbox.write_text("/tmp/mark", "x")

        @pytest.mark.sandbox(image="busybox", hostname="three")
        def test_three(nsbox, nsbox_factory):
            assert not nsbox.exists("/tmp/mark")
            assert nsbox_factory(hostname="extra").run("hostname").stdout.strip() == "extra"

        @pytest.mark.sandbox(image="busybox", memory="lots")
        def test_bad(nsbox):
            pass

        def test_plain():
            pass
    """)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*POOL 2 1 SPECS*"])
    assert "'test_one', 'test_three', 'test_three', 'test_two'" in result.stdout.str()


def test_bad_pool_size_is_a_usage_error(pytester):
    pytester.makeini("""
        [pytest]
        nsbox_pool = many
    """)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini nsbox_pool='many': not a number of boxes*"])


@pytest.mark.parametrize("name", ["nsbox_store_dir", "nsbox_state_dir"])
def test_store_ini_and_its_old_name(pytester: pytest.Pytester, name: str) -> None:
    """Issue 10: the image store's ini option is ``nsbox_store_dir`` (runc calls the run
    directory "state"); the old ``nsbox_state_dir`` still moves the store, with a
    PytestDeprecationWarning naming the new option (pytest's ``Config.
    issue_config_time_warning``, as pytest's own renamed options warn)."""
    store = pytester.path / "the-store"
    pytester.makeini(f"[pytest]\n{name} = {store}\n")
    pytester.makepyfile("""
        def test_store(nsbox_images):
            assert nsbox_images.get("scratch").ref == "scratch"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert (store / "layers").is_dir(), "the store did not move"
    if name == "nsbox_state_dir":
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(["*NsboxDeprecationWarning: ini nsbox_state_dir is "
                                     "deprecated*rename it to nsbox_store_dir*"])
    else:
        result.assert_outcomes(passed=1)
        assert "deprecated" not in result.stdout.str()
