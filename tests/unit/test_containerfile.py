"""images.containerfile: the parser of the Containerfile subset, without building anything."""
from __future__ import annotations

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.images.containerfile import expand, key_values, parse


def test_instructions_comments_continuations_and_case() -> None:
    steps = parse("""# syntax=docker/dockerfile:1
FROM busybox
env A=1 B="two words" \\
    C=3
RUN echo one \\
    # a comment inside a continuation vanishes
    && echo two
COPY --chown=1000:1000 a.txt b.txt /app/
RUN ["ls", "-l", "/"]
WORKDIR /app
LABEL team=qa
""", "CF")
    assert [s.keyword for s in steps] == ["FROM", "ENV", "RUN", "COPY", "RUN", "WORKDIR", "LABEL"]
    assert [s.line for s in steps] == [2, 3, 5, 8, 9, 10, 11]
    assert steps[0].args == "busybox"
    assert steps[2].args == "echo one && echo two" and steps[2].argv is None
    assert steps[3].flags == {"chown": "1000:1000"}
    assert steps[3].argv == ["a.txt", "b.txt", "/app/"]
    assert steps[4].argv == ["ls", "-l", "/"]
    assert key_values(steps[1], {}, "CF") == [("A", "1"), ("B", "two words"), ("C", "3")]


@pytest.mark.parametrize("text, line, message", [
    ("RUN true", 1, "CF:1: RUN: the first instruction must be FROM; e.g. `FROM busybox`"),
    ("", 0, "CF: no instructions; it must start with FROM"),
    ("FROM busybox\nFOO bar", 2, "CF:2: FOO: 'FOO' is not supported by pytest-nsbox"),
    ("FROM busybox\nADD x /x", 2, "use COPY"),
    ("FROM busybox\nCOPY onlyone", 2, "CF:2: COPY: needs at least one source and a destination"),
    ("FROM busybox\nCOPY --from=build /a /b", 2, "CF:2: COPY: unknown option --from"),
    ("FROM busybox\nRUN --network=bridge true", 2, "--network=bridge: use none"),
    ("FROM busybox\nRUN", 2, "CF:2: RUN: needs a command"),
    ('FROM busybox\nRUN ["ls", 1]', 2, "the exec form must be a JSON list"),
    ("FROM busybox AS build", 1, "multi-stage builds"),
    ("FROM busybox\nFROM host", 2, "only one FROM"),
    ("FROM busybox\nWORKDIR /a /b", 2, "CF:2: WORKDIR: takes one directory"),
    ("FROM busybox\nCOPY --chmod=rwx a /a", 2, "--chmod=rwx: an octal mode"),
])
def test_syntax_errors_name_file_line_and_instruction(text: str, line: int,
                                                      message: str) -> None:
    with pytest.raises(ImageError) as info:
        parse(text, "CF")
    assert message in str(info.value)


def test_env_and_label_forms_and_expansion() -> None:
    steps = parse("FROM x\nENV PATH=/opt/bin:$PATH NAME='$NOT' Q=\"a $A b\"\n"
                  "ENV OLD some value here\nLABEL a=${A:-dflt} b=${MISSING:-dflt} "
                  "c=${A:+set} d=\\$A\nENV A=2 B=$A", "CF")
    env = {"PATH": "/bin", "A": "1"}
    assert key_values(steps[1], env, "CF") == [("PATH", "/opt/bin:/bin"), ("NAME", "$NOT"),
                                               ("Q", "a 1 b")]
    assert key_values(steps[2], env, "CF") == [("OLD", "some value here")]
    assert key_values(steps[3], env, "CF") == [("a", "1"), ("b", "dflt"), ("c", "set"),
                                               ("d", "$A")]
    # Within one ENV, references see the values from before it (as Docker does).
    assert key_values(steps[4], env, "CF") == [("A", "2"), ("B", "1")]


def test_bad_key_values_are_named() -> None:
    steps = parse("FROM x\nENV 1BAD=x\nLABEL novalue\nENV Q=\"open", "CF")
    with pytest.raises(ImageError, match="CF:2: ENV: '1BAD' is not a variable name"):
        key_values(steps[1], {}, "CF")
    with pytest.raises(ImageError, match="CF:3: LABEL: 'novalue' is not KEY=VALUE"):
        key_values(steps[2], {}, "CF")
    with pytest.raises(ImageError, match="CF:4: ENV: unterminated \" quote"):
        key_values(steps[3], {}, "CF")


def test_expand() -> None:
    env = {"HOME": "/root", "EMPTY": ""}
    assert expand("$HOME/x ${HOME}/y ${EMPTY:-d} ${HOME:+alt} $$ \\$HOME $1", env) == \
        "/root/x /root/y d alt $$ $HOME $1"
    with pytest.raises(ImageError, match="bad variable reference"):
        expand("${HOME", env, "CF", 3, "COPY")
