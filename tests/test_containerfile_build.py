"""Containerfiles as Docker builds them, end to end: real images on ``FROM busybox`` from a
private store, checked inside boxes and in the exported image config.

Each test names the reference its expected values come from: moby/buildkit's Dockerfile
frontend (``frontend/dockerfile/parser``, ``shell/lex.go``, ``dockerfile2llb/convert.go``)
and the Dockerfile reference (docs.docker.com/reference/dockerfile/).
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.build.builder import expose_ports

from test_images import Fresh, _can_run, built  # the suite's private-store helpers

pytestmark = pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Fresh]:
    f = Fresh(tmp_path)
    yield f
    f.close()


def build(fresh: Fresh, containerfile: str, name: str = "app", **files: str) -> object:
    fresh.image_dir(name, containerfile, **files)
    return fresh.store.build(name)


# -- item 1: parsing -----------------------------------------------------------------------

def test_issue_continuation_with_an_empty_line_joins_with_nothing_inserted(
        fresh: Fresh) -> None:
    """Issue 9 item 1, first failing input. moby/buildkit parser/parser.go ``Parse``: an
    empty line inside a continuation is skipped (a warning, as BuildKit prints), the next
    line is appended as it is (its indentation kept), nothing inserted between."""
    image = build(fresh, "FROM busybox\nRUN echo one > /out && \\\n\n    echo two >> /out\n")
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/out") == "one\ntwo\n"
    assert any("Empty continuation line found in: RUN echo one > /out &&     echo two"
               in line for line in fresh.lines)


def test_issue_continued_env_value(fresh: Fresh) -> None:
    """Issue 9 item 1, second failing input: ``ENV PATH=/opt/tool/bin:\\`` then
    ``/usr/bin:/bin`` (moby/buildkit parser.go: the escape character and the line end are
    removed, nothing inserted) gives ``/opt/tool/bin:/usr/bin:/bin``."""
    image = build(fresh, "FROM busybox\nENV PATH=/opt/tool/bin:\\\n/usr/bin:/bin\n")
    assert image.env["PATH"] == "/opt/tool/bin:/usr/bin:/bin"  # type: ignore[attr-defined]
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.run('printf %s "$PATH"').stdout == "/opt/tool/bin:/usr/bin:/bin"


def test_issue_run_starting_with_a_bracket_is_shell_form(fresh: Fresh) -> None:
    """Issue 9 item 1, third failing input. moby/buildkit parser/line_parsers.go
    ``parseMaybeJSON``: text that is not a JSON array is the shell form, even if it starts
    with ``[``; ``RUN ["sh", "-c", ...]`` stays the exec form."""
    image = build(fresh, 'FROM busybox\nRUN [ -d /etc ] && echo yes > /result\n'
                         'RUN ["/bin/sh", "-c", "echo exec > /exec"]\n'
                         'CMD [ "/bin/echo", "hi" ]\n')
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/result") == "yes\n"
        assert box.read_text("/exec") == "exec\n"
    assert image.config["config"]["Cmd"] == ["/bin/echo", "hi"]  # type: ignore[attr-defined]


def test_env_forms_quotes_and_escape_directive(fresh: Fresh) -> None:
    """moby/buildkit parser/line_parsers.go ``parseNameVal`` (``k=v`` pairs and the old
    ``ENV key value`` form) and instructions ``EnvCommand.Expand`` (quotes removed by
    shell/lex.go); parser/directives.go ``# escape=``` makes the backtick the escape and
    continuation character, and ``# syntax=`` is read and ignored."""
    image = build(fresh, "# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox\n"
                         'ENV a="x y" b=z c=\'$a\' `\n    d=C:\\dir\n'
                         "ENV legacy   some  value `\n  here\n"
                         "RUN echo \"$a|$b|$c|$d|$legacy\" > /env\n")
    env = image.env  # type: ignore[attr-defined]
    assert (env["a"], env["b"], env["c"], env["d"]) == ("x y", "z", "$a", "C:\\dir")
    assert env["legacy"] == "some  value   here"
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/env") == "x y|z|$a|C:\\dir|some  value   here\n"


def test_heredocs(fresh: Fresh) -> None:
    """moby/buildkit dockerfile2llb/convert.go ``dispatchRun``: a lone ``RUN <<EOF`` runs
    its body as a shell script, or, starting with ``#!``, as an executable file; with a
    command around it the shell gets the heredoc itself; ``<<-`` strips leading tabs
    (parser.ChompHeredocContent). ``COPY <<EOF`` makes a 0644 file whose content is expanded
    unless the name is quoted (instructions/parse.go ``parseSourcesAndDest``)."""
    image = build(fresh, (
        "FROM busybox\nENV WHO=world\n"
        "RUN <<EOF\nset -e\necho one > /script\necho two >> /script\nEOF\n"
        "RUN <<EOF\n#!/bin/sh\necho \"shebang $0\" > /shebang\nEOF\n"
        "RUN <<-EOF cat > /chomped && <<'RAW' cat > /raw\n\tindented $WHO\n\tEOF\n"
        "keep $WHO\nRAW\n"
        "COPY <<EOF <<'NOEXP' /etc/\nhello $WHO\nEOF\nliteral $WHO\nNOEXP\n"))
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/script") == "one\ntwo\n"
        assert box.read_text("/shebang").startswith("shebang /")
        assert box.read_text("/chomped") == "indented world\n"
        assert box.read_text("/raw") == "keep $WHO\n"
        assert box.read_text("/etc/EOF") == "hello world\n"
        assert box.read_text("/etc/NOEXP") == "literal $WHO\n"
        assert box.run("stat -c %a:%u /etc/EOF").stdout == "644:0\n"
        assert not box.exists("/.nsbox-pipes/EOF")


# -- item 2: expansion ---------------------------------------------------------------------

def test_issue_default_word_with_a_variable(fresh: Fresh) -> None:
    """Issue 9 item 2's failing input: ``ENV D=stable`` then ``ENV T=${UNSET:-$D}`` gives
    T=stable (moby/buildkit shell/lex.go ``processDollar``), and the other modifiers in the
    instructions that expand (dockerfile2llb/convert.go ``dispatch``: ENV, LABEL, WORKDIR,
    COPY, USER, VOLUME, STOPSIGNAL, EXPOSE); RUN is left to the shell."""
    image = build(fresh, (
        "FROM busybox\nENV D=stable E=\n"
        "ENV T=${UNSET:-$D} U=${E-unset} V=${E:-empty} W=${D:+set-$D} X=${UNSET+no} "
        "Y=\\$D Z=${D%able}${D#st}\n"
        "LABEL version=${D} \"quoted key\"=\"$D and ${T}\"\n"
        "WORKDIR /srv/${D}\nEXPOSE ${PORT:-8080}/udp\nVOLUME /data/$D\n"
        "USER ${NOBODY:-65534}\nSTOPSIGNAL SIG${SIG:-TERM}\n"
        "RUN echo '$D' \"$D\" > /tmp/run\n"))
    env = image.env  # type: ignore[attr-defined]
    assert (env["T"], env["U"], env["V"], env["W"], env["X"], env["Y"], env["Z"]) == \
        ("stable", "", "empty", "set-stable", "", "$D", "stable")
    conf = image.config["config"]  # type: ignore[attr-defined]
    assert conf["Labels"] == {"version": "stable", "quoted key": "stable and stable"}
    assert conf["WorkingDir"] == "/srv/stable"
    assert conf["ExposedPorts"] == {"8080/udp": {}}
    assert conf["Volumes"] == {"/data/stable": {}}
    assert conf["User"] == "65534" and conf["StopSignal"] == "SIGTERM"
    with fresh.box(image.id, user="0") as box:  # type: ignore[attr-defined]
        assert box.read_text("/tmp/run") == "$D stable\n"


# -- item 3: ARG ---------------------------------------------------------------------------

ARGS = """\
ARG BASE=busybox
ARG UNUSED_GLOBAL=1
FROM ${BASE}
ARG VERSION=1.0
ARG FLAVOUR
ARG TARGETARCH
RUN echo "$VERSION/${FLAVOUR:-plain}/$TARGETARCH/${BASE:-no-global-in-stage}" > /version
ARG LATE
RUN echo "${LATE:-none}" > /late
"""


def test_arg_values_defaults_scope_and_cache(fresh: Fresh) -> None:
    """Dockerfile reference, ARG: a build arg overrides the default; ARGs before FROM are
    usable in FROM but not in the stage unless declared again; declared ARGs are in RUN's
    environment and not in the image's Env; predefined platform ARGs (TARGETARCH) need an
    ARG line. Cache: "ARG variables are not persisted ... a cache miss occurs upon its
    first usage, not its definition" (moby/buildkit convert.go ``dispatchArg`` puts the
    value in the state's environment, so RUN keys change only after the ARG line)."""
    from pytest_nsbox.kernel.arch import oci_platform as host_platform

    arch = host_platform()[0]
    fresh.image_dir("app", ARGS)
    first = fresh.store.build("app")
    with fresh.box(first.id) as box:
        assert box.read_text("/version") == f"1.0/plain/{arch}/no-global-in-stage\n"
        assert box.read_text("/late") == "none\n"
        assert "VERSION" not in box.run("env").stdout
    assert "VERSION" not in first.env and "BASE" not in first.env

    fresh.lines.clear()
    second = fresh.store.build("app", build_args={"LATE": "x", "NOT_DECLARED": "y"})
    steps = built(fresh.lines)
    assert len(steps) == 1 and "RUN echo \"${LATE:-none}\"" in steps[0]  # first use only
    assert second.layers[:-1] == first.layers[:-1]
    assert any("NOT_DECLARED not consumed" in line for line in fresh.lines)
    with fresh.box(second.id) as box:
        assert box.read_text("/late") == "x\n"

    third = fresh.store.build("app", build_args={"VERSION": "2.0", "FLAVOUR": "slim"})
    with fresh.box(third.id) as box:
        assert box.read_text("/version") == f"2.0/slim/{arch}/no-global-in-stage\n"

    fresh.store.build_args = {"BASE": "scratch-does-not-matter-here", "VERSION": "3"}
    with pytest.raises(ImageError, match=r"Containerfile:3: FROM \$\{BASE\} "
                                         r"\(scratch-does-not-matter-here\): .*unknown"):
        fresh.store.build("app")
    fresh.store.build_args = {"VERSION": "3"}
    with fresh.box(fresh.store.build("app", build_args={"VERSION": "4"}).id) as box:
        assert box.read_text("/version").startswith("4/")  # explicit over configured


def test_proxy_build_args_reach_run_without_arg_and_stay_out_of_the_cache(
        fresh: Fresh) -> None:
    """Dockerfile reference, "Predefined ARGs": HTTP_PROXY and friends need no ARG line,
    are not kept in the image and "changing them does not invalidate the build cache"
    (moby/buildkit convert.go ``proxyEnvFromBuildArgs`` / ``llb.WithProxy``)."""
    fresh.image_dir("app", "FROM busybox\nRUN echo \"$http_proxy\" > /proxy\n")
    one = fresh.store.build("app", build_args={"http_proxy": "http://10.0.0.1:3128"})
    with fresh.box(one.id) as box:
        assert box.read_text("/proxy") == "http://10.0.0.1:3128\n"
    fresh.lines.clear()
    two = fresh.store.build("app", build_args={"http_proxy": "http://10.9.9.9:3128"})
    assert built(fresh.lines) == [] and two.id == one.id
    assert not any("not consumed" in line for line in fresh.lines)


# -- item 3: USER, SHELL and the recorded config ---------------------------------------------

def test_user_runs_later_steps_and_is_the_default_user(fresh: Fresh) -> None:
    """Dockerfile reference, USER: "sets the user name (or UID) and optionally the user
    group (or GID) to use as the default user and group for the remainder of the current
    stage"; moby/buildkit convert.go ``dispatchUser`` records ``User`` in the config, and
    ``dispatchWorkdir`` makes the folder owned by that user."""
    image = build(fresh, "FROM busybox\nRUN echo app:x:1234:1234::/home/app:/bin/sh >> /etc/passwd"
                         " && echo app:x:1234: >> /etc/group && mkdir -p /home/app\nUSER app\n"
                         "WORKDIR /home/app/work\nRUN id -u > uid && touch mine\n"
                         "USER root:1234\nRUN id -g > /gid\n")
    assert image.config["config"]["User"] == "root:1234"  # type: ignore[attr-defined]
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/home/app/work/uid") == "1234\n"
        assert box.run("stat -c %u /home/app/work /home/app/work/mine").stdout == \
            "1234\n1234\n"
        assert box.read_text("/gid") == "1234\n"
        assert box.run("id -u; id -g").stdout == "0\n1234\n"  # the image's default user


def test_config_is_recorded_as_docker_records_it_and_exported(fresh: Fresh,
                                                            tmp_path: Path) -> None:
    """moby/buildkit dockerfile2llb/convert.go ``dispatchCmd``/``dispatchEntrypoint`` (shell
    form wrapped in the SHELL; an ENTRYPOINT drops a CMD not set in the same stage),
    ``dispatchExpose`` (convert_expose.go ``parsePort``: ``80/tcp`` keys, ranges expanded),
    ``dispatchVolume``, ``dispatchStopSignal``, ``dispatchHealthcheck`` (durations in integer
    nanoseconds, instructions/parse.go ``parseHealthcheck``), ``dispatchShell``,
    ``dispatchOnbuild``; docker/docker-image-spec ``DockerOCIImageConfig`` field names. The
    OCI layout and the docker archive carry the same config (checked with skopeo)."""
    fresh.image_dir("base", "FROM busybox\nCMD [\"base-cmd\"]\n")
    image = build(fresh, (
        "FROM base\nSHELL [\"/bin/sh\", \"-c\", \"echo \\\"$0\\\" > /shell-saw\"]\n"
        "RUN via-shell\n"
        "ENTRYPOINT /bin/echo entry\nSHELL [\"/bin/sh\", \"-ec\"]\n"
        "EXPOSE 80 53/udp 7000-7002/tcp 8080/TCP\nVOLUME [\"/data\", \"/cache\"]\n"
        "VOLUME /logs\nSTOPSIGNAL SIGINT\n"
        "HEALTHCHECK --interval=1m30s --timeout=1.5s --start-period=250ms --retries=3 "
        "CMD wget -qO- localhost || exit 1\n"
        "ONBUILD RUN echo child > /onbuild\nMAINTAINER qa@example.com\n"))
    conf = image.config["config"]  # type: ignore[attr-defined]
    assert conf["Shell"] == ["/bin/sh", "-ec"]
    assert conf["Entrypoint"] == ["/bin/sh", "-c", 'echo "$0" > /shell-saw',
                                  "/bin/echo entry"]
    assert "Cmd" not in conf  # reset by ENTRYPOINT
    assert conf["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "7000/tcp": {},
                                    "7001/tcp": {}, "7002/tcp": {}, "8080/tcp": {}}
    assert conf["Volumes"] == {"/data": {}, "/cache": {}, "/logs": {}}
    assert conf["StopSignal"] == "SIGINT"
    assert conf["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -qO- localhost || exit 1"],
                                   "Interval": 90_000_000_000, "Timeout": 1_500_000_000,
                                   "StartPeriod": 250_000_000, "Retries": 3}
    assert conf["OnBuild"] == ["RUN echo child > /onbuild"]
    assert image.config["author"] == "qa@example.com"  # type: ignore[attr-defined]
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/shell-saw") == "via-shell\n"

    child = build(fresh, "FROM app\nCMD [\"-n\", \"x\"]\n", name="child")
    cconf = child.config["config"]  # type: ignore[attr-defined]
    assert "OnBuild" not in cconf and cconf["Cmd"] == ["-n", "x"]
    assert cconf["Entrypoint"] == conf["Entrypoint"] and cconf["ArgsEscaped"] is True
    with fresh.box(child.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/onbuild") == "child\n"  # the parent's trigger ran

    if not shutil.which("skopeo"):
        pytest.skip("skopeo (ci/setup installs it) checks the exported config")
    layout, archive = tmp_path / "layout", tmp_path / "image.tar"
    image.save(str(layout), "oci", tag="v1")  # type: ignore[attr-defined]
    image.save(str(archive), format="docker-archive")  # type: ignore[attr-defined]
    for transport in (f"oci:{layout}:v1", f"docker-archive:{archive}"):
        out = subprocess.run(["skopeo", "inspect", "--raw", "--config", transport], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        exported = json.loads(out)["config"]
        for key in ("Entrypoint", "ExposedPorts", "Volumes", "StopSignal", "Healthcheck",
                    "Shell", "OnBuild", "Env", "WorkingDir"):
            assert exported[key] == conf[key], (transport, key)


# -- item 3: multi-stage -----------------------------------------------------------------------

MULTI = """\
FROM busybox AS build
RUN mkdir -p /out && echo built > /out/artifact && echo secret > /build-only
FROM busybox AS broken
RUN exit 7
FROM build AS tested
RUN cat /out/artifact > /tested
FROM busybox
COPY --from=build /out/artifact /app/artifact
COPY --from=0 /out /app/out0
COPY --from=tested /tested /app/
COPY --from=busybox /bin/busybox /app/
"""


def test_multi_stage_builds_only_what_the_target_needs(fresh: Fresh) -> None:
    """Dockerfile reference, "Multi-stage builds": ``FROM ... AS name``, ``COPY --from=NAME``,
    ``--from=INDEX`` and ``--from=IMAGE``; only the target stage (the last, or ``--target``)
    and what it depends on are built (moby/buildkit convert.go ``allReachableStages``), so
    the failing ``broken`` stage is never run."""
    image = build(fresh, MULTI)
    with fresh.box(image.id) as box:  # type: ignore[attr-defined]
        assert box.read_text("/app/artifact") == "built\n"
        assert box.read_text("/app/out0/artifact") == "built\n"
        assert box.read_text("/app/tested") == "built\n"
        assert box.run("/app/busybox true").returncode == 0
        assert not box.exists("/build-only")  # nothing of the build stage but the copies
    assert len(image.layers) == 1 + 4  # type: ignore[attr-defined]

    tested = fresh.store.build("app", target="tested")
    with fresh.box(tested.id) as box:
        assert box.read_text("/tested") == "built\n" and box.exists("/build-only")
    with pytest.raises(ImageError, match=r"Containerfile:4: RUN exit 7 exited with status 7"):
        fresh.store.build("app", target="broken")
    with pytest.raises(ImageError, match="target stage 'nope' could not be found"):
        fresh.store.build("app", target="nope")


def test_copy_from_a_later_stage_is_refused(fresh: Fresh) -> None:
    """moby/buildkit convert.go ``dispatch``: "cannot copy from stage %q, it needs to be
    defined before current stage %q"; --from takes no variables (``toCommand``)."""
    fresh.image_dir("app", "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\n")
    with pytest.raises(ImageError, match="Containerfile:2: COPY: cannot copy from stage 'b', "
                                         "it needs to be defined before current stage 'a'"):
        fresh.store.build("app", target="a")
    fresh.image_dir("app", "FROM busybox AS a\nFROM busybox\nCOPY --from=$S /x /x\n")
    with pytest.raises(ImageError, match="--from=\\$S: variable expansion is not supported"):
        fresh.store.build("app")


# -- item 3: ADD ---------------------------------------------------------------------------

def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_add_extracts_local_archives_and_refuses_urls(fresh: Fresh) -> None:
    """Dockerfile reference, ADD: "a local tar archive in a recognized compression format
    (identity, gzip, bzip2 or xz) is unpacked as a directory"; other local files are copied
    as COPY does; ``--unpack=false`` copies the archive itself. Builds have no network, so a
    URL is a one-line error naming the file and line."""
    folder = fresh.image_dir("app", "FROM busybox\nADD bundle.tar.gz /opt/\n"
                                    "ADD --unpack=false bundle.tar.gz /raw/\n"
                                    "ADD note.txt /opt/note.txt\n", **{"note.txt": "n\n"})
    (folder / "bundle.tar.gz").write_bytes(gzip.compress(_tar({"pkg/a.txt": b"a\n"})))
    image = fresh.store.build("app")
    with fresh.box(image.id) as box:
        assert box.read_text("/opt/pkg/a.txt") == "a\n"
        assert box.run("stat -c %a /opt/pkg/a.txt").stdout == "640\n"
        assert box.exists("/raw/bundle.tar.gz") and box.read_text("/opt/note.txt") == "n\n"
    fresh.image_dir("app", "FROM busybox\nADD https://example.com/x.tgz /x/\n")
    with pytest.raises(ImageError) as info:
        fresh.store.build("app")
    assert str(info.value).startswith(f"{folder}/Containerfile:2: ADD https://example.com/x.tgz")
    assert "no network" in str(info.value) and "\n" not in str(info.value)


# -- what is still refused -------------------------------------------------------------------

@pytest.mark.parametrize("containerfile, message", [
    ("FROM busybox\nRUN --mount=type=cache,target=/c true\n",
     "Containerfile:2: RUN: --mount is not supported by pytest-nsbox"),
    ("FROM busybox\nADD --checksum=sha256:00 Containerfile /x\n",
     "Containerfile:2: ADD: --checksum=sha256:00 checks a download"),
    ("FROM --platform=linux/s390x busybox\n", "Containerfile:1: FROM: --platform=linux/s390x"),
    ("FROM busybox\nRUNN true\n", "Containerfile:2: RUNN: 'RUNN' is not supported"),
    ("FROM busybox\nCOPY --fromm=x a /b\n", "Containerfile:2: COPY: unknown flag: --fromm"),
    ("FROM busybox\nSTOPSIGNAL SIGNOPE\n", "Containerfile:2: STOPSIGNAL: invalid signal"),
    ("FROM busybox\nEXPOSE 80/icmp\n", "Containerfile:2: EXPOSE: invalid port '80/icmp'"),
])
def test_unsupported_or_invalid_is_one_line_naming_file_line_and_instruction(
        fresh: Fresh, containerfile: str, message: str) -> None:
    """Issue 9 item 3: anything still unsupported (or invalid, with BuildKit's own words
    where it has them: instructions/bflag.go "unknown flag", moby/sys signal, convert_expose.go
    "invalid proto") is one line naming the file, the line and the instruction."""
    folder = fresh.image_dir("app", containerfile)
    with pytest.raises(ImageError) as info:
        fresh.store.build("app")
    text = str(info.value)
    assert f"{folder}/{message}" in text and "\n" not in text


def test_expose_port_specs() -> None:
    """moby/buildkit dockerfile2llb/convert_expose.go ``parsePort`` (and its test table):
    default tcp, ranges, host parts ignored, protocol lower-cased."""
    assert expose_ports("80") == ["80/tcp"]
    assert expose_ports("53/UDP") == ["53/udp"]
    assert expose_ports("8000-8002") == ["8000/tcp", "8001/tcp", "8002/tcp"]
    assert expose_ports("127.0.0.1:8080:80/sctp") == ["80/sctp"]
    assert expose_ports("[::1]:8080:80") == ["80/tcp"]
    for bad in ("", "/tcp", "80/icmp", "70000", "9-8", "a", "1.2.3:80:80"):
        with pytest.raises(ValueError):
            expose_ports(bad)


# -- where ARG values come from -----------------------------------------------------------------

ARG_IMAGE = """\
FROM busybox
ARG GREETING=default OTHER FROMENV
RUN echo "$GREETING/${OTHER:-none}/${FROMENV:-unset}" > /args
"""


def test_build_args_from_ini_command_line_and_fixture(pytester: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTRACT.md: ``nsbox_images.build(path_or_name, build_args=None)``; the plugin adds
    ``--nsbox-build-arg KEY=VALUE`` (repeatable) over ini ``nsbox_build_args``, and a
    ``KEY`` alone takes its value from the environment, as docker/cli's ``--build-arg``
    does (opts.ValidateEnv). A marker's image name builds with the configured args."""
    folder = pytester.path / "fixtures_images" / "argimg"
    folder.mkdir(parents=True)
    (folder / "Containerfile").write_text(ARG_IMAGE)
    store = pytester.path / "store"
    pytester.makeini(f"[pytest]\nnsbox_store_dir = {store}\n"
                     "nsbox_build_args =\n    GREETING=from-ini\n    OTHER=ini\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="argimg")
        def test_marker_image(nsbox):
            assert nsbox.read_text("/args") == "from-ini/cli/from-env\\n"

        def test_fixture(nsbox_images, nsbox_factory):
            image = nsbox_images.build("argimg", build_args={"GREETING": "explicit"})
            box = nsbox_factory(image=image.id)
            assert box.read_text("/args") == "explicit/cli/from-env\\n"
    """)
    monkeypatch.setenv("FROMENV", "from-env")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--nsbox-build-arg",
                                           "OTHER=cli", "--nsbox-build-arg", "FROMENV")
    result.assert_outcomes(passed=2)


def test_cli_images_build_takes_build_args_and_a_target(tmp_path: Path) -> None:
    """``python -m pytest_nsbox images build --build-arg KEY=VALUE --target STAGE PATH``, as
    ``docker build --build-arg ... --target ...`` (Dockerfile reference, ARG and
    multi-stage builds)."""
    import os
    import sys
    import tempfile

    from pytest_nsbox.state import default_run_dir
    from pytest_nsbox.kernel.fs import remove_tree

    run = tempfile.mkdtemp(prefix="nsbox-clitest-", dir=os.path.dirname(default_run_dir()))
    where = ("--store", str(tmp_path / "store"), "--run", run)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Containerfile").write_text(
        "FROM busybox AS one\nARG V=0\nRUN echo $V > /v\nFROM one AS two\nRUN cat /v > /w\n"
        "FROM busybox\nRUN exit 3\n")
    try:
        result = subprocess.run([sys.executable, "-m", "pytest_nsbox", *where, "images",
                                 "build", "--build-arg", "V=7", "--target", "two",
                                 str(tmp_path / "app")],
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("built app sha256:")
        image_id = result.stdout.split()[2]
        f = Fresh(tmp_path)
        try:
            with f.box(image_id) as box:
                assert box.read_text("/w") == "7\n"
        finally:
            f.close()
    finally:
        remove_tree(run)
