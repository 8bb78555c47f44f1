"""The ``Containerfile`` subset pytest-nsbox builds: FROM, RUN, COPY, ENV, WORKDIR, LABEL.

Parsing is separate from building: ``parse(text, filename)`` returns a list of
``Instruction`` (or raises an ``ImageError`` naming ``file:line``, the instruction and a
correct example), with Docker's surface syntax: case-insensitive keywords, ``#`` comment
lines, ``\\`` line continuations, shell and JSON (exec) forms, ``--flag=value`` options.
Variables (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alt}``) are expanded in the
arguments of COPY, ENV, WORKDIR and LABEL from the ENV values set so far; RUN is left to the
shell, as Docker does.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import ImageError

SUPPORTED = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "LABEL")
EXAMPLES = {
    "FROM": "FROM busybox",
    "RUN": "RUN mkdir -p /app && echo ok > /app/ready",
    "COPY": "COPY --chown=1000:1000 app.py /app/",
    "ENV": "ENV APP_MODE=test PORT=8080",
    "WORKDIR": "WORKDIR /app",
    "LABEL": 'LABEL org.example.team="qa"',
}
HINTS = {
    "ADD": "use COPY (archives and URLs are not fetched)",
    "CMD": "pass the command to box.run() instead",
    "ENTRYPOINT": "pass the command to box.run() instead",
    "USER": "pass user= to box.run() instead",
    "ARG": "use ENV",
    "EXPOSE": "boxes need no EXPOSE; use box.connect()/forward()",
}
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<word>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


@dataclass
class Instruction:
    """One instruction: ``keyword`` upper-case, ``args`` as the source gave them.

    ``flags`` are the ``--name=value`` options; ``argv`` is set for the JSON form of RUN
    and COPY; ``line`` is the 1-based line it starts on; ``text`` its whole source text.
    """

    keyword: str
    args: str
    line: int
    text: str
    flags: dict[str, str] = field(default_factory=dict)
    argv: list[str] | None = None

    def where(self, filename: str) -> str:
        return f"{filename}:{self.line}: {self.keyword}"


def error(filename: str, line: int, keyword: str, problem: str) -> ImageError:
    example = EXAMPLES.get(keyword)
    hint = f"; e.g. `{example}`" if example else ""
    return ImageError(f"{filename}:{line}: {keyword or 'instruction'}: {problem}{hint}")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Joined lines (continuations resolved, comments dropped) with their first line number."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments (and parser directives) vanish, inside continuations too
        if not buf and not stripped:
            continue
        if not buf:
            start = number
        if raw.rstrip().endswith("\\"):
            buf.append(raw.rstrip()[:-1])
            continue
        buf.append(raw)
        out.append((start, " ".join(part.strip() for part in buf).strip()))
        buf = []
    if buf:
        joined = " ".join(part.strip() for part in buf).strip()
        if joined:
            out.append((start, joined))
    return out


def _split_flags(rest: str, filename: str, line: int, keyword: str,
                 allowed: tuple[str, ...]) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        name, eq, value = word[2:].partition("=")
        if name not in allowed:
            ok = ", ".join(f"--{a}" for a in allowed) or "none"
            raise error(filename, line, keyword, f"unknown option --{name} (supported: {ok})")
        if not eq or not value:
            raise error(filename, line, keyword, f"option --{name} needs a value (--{name}=...)")
        flags[name] = value
        rest = after.lstrip()
    return flags, rest


def _json_list(rest: str) -> list[str] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def parse(text: str, filename: str = "Containerfile") -> list[Instruction]:
    """The instructions of a Containerfile; raises ImageError naming file:line on error."""
    out: list[Instruction] = []
    for line, joined in _logical_lines(text):
        word, _, rest = joined.partition(" ")
        rest = rest.strip()
        keyword = word.upper()
        if keyword not in SUPPORTED:
            hint = HINTS.get(keyword, "")
            supported = ", ".join(SUPPORTED)
            problem = (f"{word!r} is not supported by pytest-nsbox (supported: {supported})"
                       + (f"; {hint}" if hint else ""))
            raise ImageError(f"{filename}:{line}: {word}: {problem}")
        ins = Instruction(keyword=keyword, args=rest, line=line, text=joined)
        if keyword == "FROM":
            flags, rest = _split_flags(rest, filename, line, keyword, ())
            parts = rest.split()
            if len(parts) != 1:
                if len(parts) == 3 and parts[1].upper() == "AS":
                    raise error(filename, line, keyword, "multi-stage builds (FROM ... AS ...) "
                                                         "are not supported")
                raise error(filename, line, keyword, f"takes one image reference, got {rest!r}")
            ins.args = parts[0]
        elif keyword == "RUN":
            ins.flags, rest = _split_flags(rest, filename, line, keyword, ("network",))
            network = ins.flags.get("network", "none")
            if network not in ("none", "host"):
                raise error(filename, line, keyword, f"--network={network}: use none (the "
                                                     f"default) or host")
            if not rest:
                raise error(filename, line, keyword, "needs a command")
            ins.argv = _json_list(rest)
            if rest.startswith("[") and ins.argv is None:
                raise error(filename, line, keyword, "the exec form must be a JSON list of "
                                                     "strings, e.g. [\"ls\", \"-l\"]")
            ins.args = rest
        elif keyword == "COPY":
            ins.flags, rest = _split_flags(rest, filename, line, keyword, ("chown", "chmod"))
            if "chmod" in ins.flags and not re.fullmatch(r"[0-7]{3,4}", ins.flags["chmod"]):
                raise error(filename, line, keyword, f"--chmod={ins.flags['chmod']}: an octal "
                                                     f"mode like 755")
            if "--from" in joined:
                raise error(filename, line, keyword, "--from (multi-stage) is not supported")
            argv = _json_list(rest)
            if argv is None:
                if rest.startswith("["):
                    raise error(filename, line, keyword, "the JSON form must be a list of "
                                                         "strings")
                argv = rest.split()
            if len(argv) < 2:
                raise error(filename, line, keyword, "needs at least one source and a "
                                                     "destination")
            ins.argv = argv
        elif keyword in ("ENV", "LABEL"):
            if not rest:
                raise error(filename, line, keyword, "needs KEY=VALUE")
        elif keyword == "WORKDIR":
            if not rest or len(rest.split()) != 1:
                raise error(filename, line, keyword, "takes one directory")
        out.append(ins)
    if not out:
        raise ImageError(f"{filename}: no instructions; it must start with FROM, e.g. "
                         f"`FROM busybox`")
    if out[0].keyword != "FROM":
        raise ImageError(f"{filename}:{out[0].line}: {out[0].keyword}: the first instruction "
                         f"must be FROM; e.g. `FROM busybox`")
    for ins in out[1:]:
        if ins.keyword == "FROM":
            raise error(filename, ins.line, "FROM", "only one FROM is supported (no "
                                                    "multi-stage builds)")
    return out


def expand(value: str, env: dict[str, str], filename: str = "", line: int = 0,
           keyword: str = "") -> str:
    """``$VAR`` / ``${VAR}`` / ``${VAR:-default}`` / ``${VAR:+alt}``; ``\\$`` is a dollar."""
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if ch == "$":
            m = _VAR.match(value, i)
            if m is None:
                if value.startswith("${", i):
                    raise error(filename, line, keyword, f"bad variable reference in {value!r}")
                out.append(ch)
                i += 1
                continue
            name = m.group("braced") or m.group("plain")
            op, word = m.group("op"), m.group("word")
            current = env.get(name, "")
            if op == ":-":
                out.append(current if current else word)
            elif op == ":+":
                out.append(word if current else "")
            else:
                out.append(current)
            i = m.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _words(text: str, filename: str, line: int, keyword: str,
           env: dict[str, str] | None = None) -> list[str]:
    """Split like a shell word list: quotes group, backslash escapes, quotes removed; with
    ``env``, variables are expanded outside single quotes."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    in_word = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$" and env is not None and quote != "'":
            m = _VAR.match(text, i)
            if m is not None:
                cur.append(expand(m.group(0), env, filename, line, keyword))
                in_word = True
                i = m.end()
                continue
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"' and i + 1 < len(text) and text[i + 1] in '"\\$':
                i += 1
                cur.append(text[i])
            else:
                cur.append(ch)
        elif ch in "\"'":
            quote = ch
            in_word = True
        elif ch == "\\" and i + 1 < len(text):
            i += 1
            cur.append(text[i])
            in_word = True
        elif ch.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(ch)
            in_word = True
        i += 1
    if quote:
        raise error(filename, line, keyword, f"unterminated {quote} quote")
    if in_word:
        words.append("".join(cur))
    return words


def key_values(ins: Instruction, env: dict[str, str], filename: str) -> list[tuple[str, str]]:
    """The pairs of ENV/LABEL: ``K=V K2="v 2"``, or ENV's old form ``ENV K some value``.

    Variables expand from the ENV values before this instruction (``ENV A=1 B=$A`` gives B
    the old A), as Docker does.
    """
    text = ins.args
    first = text.split(None, 1)[0]
    if ins.keyword == "ENV" and "=" not in first:
        key, _, value = text.partition(" ")
        vals = _words(value.strip(), filename, ins.line, ins.keyword, env)
        if not vals:
            raise error(filename, ins.line, ins.keyword, f"{key!r} needs a value")
        pairs = [(key, " ".join(vals))]
    else:
        pairs = []
        for word in _words(text, filename, ins.line, ins.keyword, env):
            key, eq, value = word.partition("=")
            if not eq or not key:
                raise error(filename, ins.line, ins.keyword, f"{word!r} is not KEY=VALUE")
            pairs.append((key, value))
    if ins.keyword == "ENV":
        for key, _value in pairs:
            if not _ENV_KEY.match(key):
                raise error(filename, ins.line, ins.keyword, f"{key!r} is not a variable name")
    return pairs
