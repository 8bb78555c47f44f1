"""Containerfile (Dockerfile) parsing as BuildKit's Dockerfile frontend does it.

Two layers, each a port of moby/buildkit:

- ``parse_ast(text)`` is ``frontend/dockerfile/parser`` (parser.go, line_parsers.go,
  split_command.go, directives.go): parser directives (``# escape=`` honoured; ``# syntax=``
  and ``# check=`` read and ignored) before anything else; continuation lines joined with
  nothing inserted (only the escape character and the spaces after it are removed); empty
  lines and comment lines inside a continuation skipped; ``--flags``; JSON (exec) form only
  for a valid JSON array, so ``RUN [ -d /etc ]`` is shell form (an array holding a
  non-string is an error); ``ENV``/``LABEL`` in ``k=v`` and the old ``k v`` form, quotes kept
  for the expansion step; heredocs (``RUN <<EOF``, ``COPY <<-"EOF" /dest``) on ADD, COPY and
  RUN. Each ``Node`` keeps BuildKit's AST shape (``dump()`` prints it as ``Node.Dump``).
- ``parse(text, filename)`` is ``frontend/dockerfile/instructions/parse.go``: the nodes as
  typed ``Instruction``s grouped into ``Stage``s (``FROM ... AS name``), ARGs before the
  first FROM as meta args, each instruction's ``--flags`` checked (BuildKit's BFlags rules),
  HEALTHCHECK options parsed (Go durations, integer nanoseconds).

Variables are not expanded here: the builder expands each instruction with
``shell_lex.Lex`` as it runs it, in the environment of that step. Every error is an
``ImageError`` naming ``file:line``, the instruction and what was wrong, with an example.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ImageError
from .shell_lex import Lex, ShellLexError, go_is_space, go_quote

DEFAULT_ESCAPE = "\\"
INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM",
                "HEALTHCHECK", "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL",
                "USER", "VOLUME", "WORKDIR")
EXAMPLES = {
    "FROM": "FROM busybox AS build",
    "RUN": "RUN mkdir -p /app && echo ok > /app/ready",
    "COPY": "COPY --chown=1000:1000 app.py /app/",
    "ADD": "ADD rootfs.tar.gz /",
    "ENV": "ENV APP_MODE=test PORT=8080",
    "ARG": "ARG VERSION=1.0",
    "WORKDIR": "WORKDIR /app",
    "LABEL": 'LABEL org.example.team="qa"',
    "USER": "USER 1000:1000",
    "CMD": 'CMD ["python3", "-m", "app"]',
    "ENTRYPOINT": 'ENTRYPOINT ["/app/run.sh"]',
    "EXPOSE": "EXPOSE 8080/tcp",
    "VOLUME": "VOLUME /data",
    "STOPSIGNAL": "STOPSIGNAL SIGTERM",
    "HEALTHCHECK": "HEALTHCHECK --interval=5s CMD wget -qO- localhost:8080",
    "SHELL": 'SHELL ["/bin/sh", "-ec"]',
    "ONBUILD": "ONBUILD COPY . /app",
    "MAINTAINER": "MAINTAINER qa@example.com",
}

# parser.go: reWhitespace, reHeredoc (Go's \s and \d are ASCII only).
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z",
                        re.DOTALL)
_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC_KEYWORDS = ("add", "copy", "run")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*\Z")
_NO_INSTRUCTIONS = "file with no instructions"


class ParseError(ValueError):
    """A BuildKit parse error, before it is placed at ``file:line``."""


@dataclass
class Heredoc:
    """A heredoc attached to an instruction (BuildKit ``parser.Heredoc``). ``content`` is
    as written (``chomp``, from ``<<-``, strips leading tabs when it is used); ``expand`` is
    False when any part of the name was quoted (``<<'EOF'``)."""

    name: str
    content: str = ""
    file_descriptor: int = 0
    expand: bool = True
    chomp: bool = False

    def data(self) -> str:
        """The content as used: leading tabs removed for ``<<-`` (ChompHeredocContent)."""
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass
class Node:
    """One instruction as BuildKit's parser leaves it (``parser.Node``): the keyword as
    written, its ``--flags``, its arguments (``args``; ``json`` for a JSON array),
    ``original`` (the joined line), its first and last line, heredocs, and for ONBUILD the
    instruction it holds (``sub``)."""

    keyword: str
    args: list[str]
    original: str
    flags: list[str] = field(default_factory=list)
    json: bool = False
    sub: Node | None = None
    start_line: int = 0
    end_line: int = 0
    heredocs: list[Heredoc] = field(default_factory=list)

    def dump(self) -> str:
        """BuildKit's ``Node.Dump`` of this node (its test files' ``result`` format)."""
        out = self.keyword.lower()
        if self.flags:
            out += " [" + " ".join(go_quote(f) for f in self.flags) + "]"
        if self.sub is not None:
            return f"{out} ({self.sub.dump()})"
        for arg in self.args:
            out += " " + go_quote(arg)
        return out.strip()


@dataclass
class ParseResult:
    """``parse_ast``'s result: the nodes, the escape character, empty-continuation
    warnings (as BuildKit prints them) and the parser directives found."""

    nodes: list[Node]
    escape: str = DEFAULT_ESCAPE
    warnings: list[str] = field(default_factory=list)
    directives: dict[str, str] = field(default_factory=dict)


class _Directives:
    """parser.go ``directives`` and directives.go ``DirectiveParser``: parser directives
    are read only before the first comment, empty line or instruction."""

    def __init__(self) -> None:
        self.escape = DEFAULT_ESCAPE
        self.done = False
        self.seen: dict[str, str] = {}
        self._set_continuation()

    def _set_continuation(self) -> None:
        e = re.escape(self.escape)
        self.continuation = re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")

    def possible_directive(self, line: str) -> bool:
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        m = _DIRECTIVE.match(_lstrip(line[1:]))
        if m is None or m.group(1).lower() not in _DIRECTIVES:
            self.done = True
            return False
        key = m.group(1).lower()
        if key in self.seen:
            raise ParseError(f"only one {key} parser directive can be used")
        self.seen[key] = m.group(2)
        if key == "escape":
            if m.group(2) not in ("`", "\\"):
                raise ParseError(f"invalid escape token '{m.group(2)}' does not match ` or \\")
            self.escape = m.group(2)
            self._set_continuation()
        return True


def _lstrip(text: str) -> str:
    i = 0
    while i < len(text) and go_is_space(text[i]):
        i += 1
    return text[i:]


def _strip(text: str) -> str:
    text = _lstrip(text)
    j = len(text)
    while j > 0 and go_is_space(text[j - 1]):
        j -= 1
    return text[:j]


def _is_comment(line: str) -> bool:
    return _lstrip(line).startswith("#")


def _lines(text: str) -> list[str]:
    """The lines of ``text``, each with its line ending (parser.go ``scanLines``)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _process_line(d: _Directives, token: str, strip_left: bool) -> str:
    token = token.rstrip("\r\n")
    if strip_left:
        token = _lstrip(token)
    d.possible_directive(token)
    return "" if _is_comment(token) else token


def _trim_continuation(line: str, d: _Directives) -> tuple[str, bool]:
    """(the line without a trailing escape character, whether the instruction ends here)"""
    if d.continuation.search(line):
        return d.continuation.sub(lambda m: m.group(1) or "", line, count=1), False
    return line, True


class _Located(Exception):
    """A parse error at a line, with the keyword of the instruction when there is one."""

    def __init__(self, message: str, line: int, keyword: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.keyword = keyword


def _keyword(line: str) -> str:
    parts = _WHITESPACE.split(_strip(line), maxsplit=1)
    return parts[0].upper() if parts else ""


def parse_ast(text: str) -> ParseResult:
    """BuildKit's ``parser.Parse``; raises ``_Located`` (message, line) on error."""
    d = _Directives()
    tokens = _lines(text)
    nodes: list[Node] = []
    warnings: list[str] = []
    current = 0
    i = 0
    while i < len(tokens):
        raw = tokens[i]
        i += 1
        if current == 0 and raw.startswith("\ufeff"):
            raw = raw[1:]
        try:
            line = _process_line(d, raw, True)
        except ParseError as exc:
            raise _Located(str(exc), current + 1) from None
        current += 1
        start = current
        line, end = _trim_continuation(line, d)
        if end and not line:
            continue
        buf = [line]
        empty_continuation = False
        while not end and i < len(tokens):
            raw = tokens[i]
            i += 1
            try:
                part = _process_line(d, raw, False)
            except ParseError as exc:
                raise _Located(str(exc), current + 1) from None
            current += 1
            if _is_comment(raw):
                continue
            if not _lstrip(part.rstrip("\r\n")):
                empty_continuation = True
                continue
            part, end = _trim_continuation(part, d)
            buf.append(part)
        joined = "".join(buf)
        if empty_continuation:
            warnings.append(f"Empty continuation line found in: {joined}")
        try:
            node = _node_from_line(joined, d)
        except ParseError as exc:
            raise _Located(str(exc), start, _keyword(joined)) from None
        if _can_contain_heredoc(node) and "<<" in joined:
            try:
                docs = _heredocs_from_line(joined)
            except ParseError as exc:
                raise _Located(str(exc), start, _keyword(joined)) from None
            for doc in docs:
                content: list[str] = []
                terminated = False
                while i < len(tokens):
                    raw = tokens[i]
                    i += 1
                    current += 1
                    possible = raw.rstrip("\r\n")
                    if doc.chomp:
                        possible = possible.lstrip("\t")
                    if possible == doc.name:
                        terminated = True
                        break
                    content.append(raw)
                if not terminated:
                    raise _Located(f"unterminated heredoc <<{doc.name} (no line {doc.name!r} "
                                   f"ends it)", start, _keyword(joined))
                doc.content = "".join(content)
                node.heredocs.append(doc)
        node.start_line, node.end_line = start, current
        nodes.append(node)
    if not nodes:
        raise _Located(_NO_INSTRUCTIONS, current)
    return ParseResult(nodes, d.escape, warnings, dict(d.seen))


def _can_contain_heredoc(node: Node) -> bool:
    if node.keyword.lower() == "onbuild" and node.sub is not None:
        node = node.sub
    return node.keyword.lower() in _HEREDOC_KEYWORDS and not node.json


def parse_heredoc(src: str) -> Heredoc | None:
    """A heredoc word (``<<EOF``, ``3<<-'EOF'``), or None (parser.go ``ParseHeredoc``)."""
    m = _HEREDOC.match(src)
    if m is None or not m.group(3):
        return None
    fd = int(m.group(1)) if m.group(1) else 0
    rest = m.group(3)
    try:
        words = Lex("\\", skip_unset_env=True).process_words(rest, {})
        if len(words) != 1:
            return None
        raw = Lex("\\", skip_unset_env=True, raw_quotes=True).process_words(rest, {})
    except ShellLexError as exc:
        raise ParseError(str(exc)) from None
    if len(raw) != len(words):
        raise ParseError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    word = words[0]
    quotes = word.count("'") + word.count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(name=word, file_descriptor=fd, expand=quotes == raw_quotes,
                   chomp=m.group(2) == "-")


def _heredocs_from_line(line: str) -> list[Heredoc]:
    lex = Lex("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    try:
        words = lex.process_words(line, {})
    except ShellLexError:
        words = []
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


# -- line parsers (line_parsers.go, split_command.go) --------------------------------------

def _split_command(line: str, d: _Directives) -> tuple[str, list[str], str]:
    parts = _WHITESPACE.split(_strip(line), maxsplit=1)
    flags: list[str] = []
    args = ""
    if len(parts) == 2:
        args, flags = _extract_flags(parts[1], d)
    return parts[0], flags, _strip(args)


def _extract_flags(line: str, d: _Directives) -> tuple[str, list[str]]:
    """The ``--flags`` at the start of ``line`` and the rest (``extractBuilderFlags``)."""
    spaces, in_word, in_quote = 0, 1, 2
    words: list[str] = []
    phase = spaces
    buf: list[str] = []
    quote = ""
    blank_ok = False
    ch = ""
    n = len(line)
    pos = -1
    while True:
        pos += 1
        if pos > n:
            break
        if pos != n:
            ch = line[pos]
        if phase == spaces:
            if pos == n:
                break
            if go_is_space(ch):
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = in_word
        if phase in (in_word, in_quote) and pos == n:
            word = "".join(buf)
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == in_word:
            if go_is_space(ch):
                word = "".join(buf)
                phase = spaces
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                buf = []
                blank_ok = False
                continue
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
                phase = in_quote
                continue
            if ch == d.escape:
                if pos + 1 == n:
                    continue
                pos += 1
                ch = line[pos]
            buf.append(ch)
            continue
        if phase == in_quote:
            if ch == quote:
                phase = in_word
                continue
            if ch == d.escape:
                if pos + 1 == n:
                    phase = in_word
                    continue
                pos += 1
                ch = line[pos]
            buf.append(ch)
    return "", words


def parse_words(rest: str, escape: str = DEFAULT_ESCAPE) -> list[str]:
    """Words split at unquoted white space, quotes and escapes kept (``parseWords``)."""
    spaces, in_word, in_quote = 0, 1, 2
    words: list[str] = []
    phase = spaces
    quote = ""
    blank_ok = False
    buf: list[str] = []
    n = len(rest)
    pos = -1
    ch = ""
    while True:
        pos += 1
        if pos > n:
            break
        if pos != n:
            ch = rest[pos]
        if phase == spaces:
            if pos == n:
                break
            if go_is_space(ch):
                continue
            phase = in_word
        if phase in (in_word, in_quote) and pos == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == in_word:
            if go_is_space(ch):
                phase = spaces
                if blank_ok or buf:
                    words.append("".join(buf))
                buf = []
                blank_ok = False
                continue
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
                phase = in_quote
            if ch == escape:
                if pos + 1 == n:
                    continue  # an escape character at the end is dropped
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
            continue
        if phase == in_quote:
            if ch == quote:
                phase = in_word
            if ch == escape and quote != "'":
                if pos + 1 == n:
                    phase = in_word
                    continue
                pos += 1
                buf.append(ch)
                ch = rest[pos]
            buf.append(ch)
    return words


class _NotJSON(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")  # Go's encoding/json has no NaN


def _parse_json(rest: str) -> list[str]:
    rest = _lstrip(rest)
    if not rest.startswith("["):
        raise _NotJSON()
    try:
        value = json.loads(rest, parse_constant=_reject_constant)
    except ValueError:
        raise _NotJSON() from None
    if not isinstance(value, list):
        raise _NotJSON()
    if not all(isinstance(v, str) for v in value):
        raise ParseError("when using JSON array syntax, arrays must be comprised of strings "
                         "only")
    return value


def _maybe_json(rest: str) -> tuple[list[str], bool]:
    if rest == "":
        return [], False
    try:
        return _parse_json(rest), True
    except _NotJSON:
        return [rest], False


def _maybe_json_list(rest: str) -> tuple[list[str], bool]:
    try:
        return _parse_json(rest), True
    except _NotJSON:
        return _whitespace_list(rest), False


def _whitespace_list(rest: str) -> list[str]:
    return _WHITESPACE.split(rest) if rest else []


def _name_val(rest: str, key: str, d: _Directives) -> list[str]:
    """ENV/LABEL: (key, value, delimiter) triples; the old form ``KEY value`` has delimiter
    "" and the rest of the line (spaces included) as its value."""
    words = parse_words(rest, d.escape)
    if not words:
        return []
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise ParseError(f"{key} must have two arguments")
        return [parts[0], parts[1], ""]
    out: list[str] = []
    for word in words:
        if "=" not in word:
            raise ParseError(f"Syntax error - can't find = in {go_quote(word)}. Must be of "
                             f"the form: name=value")
        k, _, v = word.partition("=")
        out += [k, v, "="]
    return out


def _health(rest: str) -> tuple[list[str], bool]:
    sep = 0
    while sep < len(rest) and not go_is_space(rest[sep]):
        sep += 1
    nxt = sep
    while nxt < len(rest) and go_is_space(rest[nxt]):
        nxt += 1
    if sep == 0:
        return [], False
    cmd, is_json = _maybe_json(rest[nxt:])
    return [rest[:sep], *cmd], is_json


def _node_from_line(line: str, d: _Directives) -> Node:
    keyword, flags, rest = _split_command(line, d)
    kind = keyword.lower()
    node = Node(keyword=keyword, args=[], original=line, flags=flags)
    if kind in ("add", "copy", "volume"):
        node.args, node.json = _maybe_json_list(rest)
    elif kind in ("cmd", "entrypoint", "run", "shell"):
        node.args, node.json = _maybe_json(rest)
    elif kind in ("env", "label"):
        node.args = _name_val(rest, "LABEL" if kind == "label" else "ENV", d)
    elif kind == "arg":
        node.args = parse_words(rest, d.escape)
    elif kind in ("expose", "from"):
        node.args = _whitespace_list(rest)
    elif kind == "healthcheck":
        node.args, node.json = _health(rest)
    elif kind in ("maintainer", "stopsignal", "user", "workdir"):
        node.args = [rest] if rest else []
    elif kind == "onbuild":
        node.sub = _node_from_line(rest, d) if rest else None
    else:
        node.args = [""]  # parseIgnore: an unknown instruction is refused later
    return node


# -- instructions (instructions/parse.go) --------------------------------------------------

@dataclass
class Instruction:
    """One typed instruction. Which fields are set depends on ``keyword`` (upper case):

    - all: ``line``/``end_line`` (1-based), ``text`` (the source, heredocs included),
      ``args`` (BuildKit's node arguments), ``json``, ``flags`` (``--name`` -> str, bool,
      or list of str for repeatable ones), ``heredocs``.
    - RUN, CMD, ENTRYPOINT: ``cmdline`` (the JSON array, or the shell-form text as one
      element; None for an empty ENTRYPOINT) and ``prepend_shell`` (shell form).
    - ENV, LABEL: ``pairs`` (key, value) still quoted; ARG: ``arg_pairs`` (key, default or
      None).
    - ADD, COPY: ``sources`` (paths, unexpanded), ``contents`` (heredoc sources), ``dest``.
    - HEALTHCHECK: ``health`` (Docker's HealthcheckConfig: Test, Interval ns, ...).
    - ONBUILD: ``expression`` (the trigger's source text).
    """

    keyword: str
    line: int
    end_line: int
    text: str
    args: list[str] = field(default_factory=list)
    json: bool = False
    flags: dict[str, Any] = field(default_factory=dict)
    heredocs: list[Heredoc] = field(default_factory=list)
    cmdline: list[str] | None = None
    prepend_shell: bool = False
    pairs: list[tuple[str, str]] = field(default_factory=list)
    arg_pairs: list[tuple[str, str | None]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    contents: list[Heredoc] = field(default_factory=list)
    dest: str = ""
    health: dict[str, Any] | None = None
    expression: str = ""

    def where(self, filename: str) -> str:
        return f"{filename}:{self.line}: {self.keyword}"


@dataclass
class Stage:
    """A build stage: ``FROM base [AS name]`` (``name`` lower-cased, "" when unnamed; ``base``
    unexpanded) and its instructions."""

    base: str
    name: str
    platform: str
    line: int
    text: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Containerfile:
    """A parsed Containerfile: ARGs before the first FROM (``meta_args``), the stages, the
    escape character, and the parser's warnings."""

    meta_args: list[Instruction]
    stages: list[Stage]
    escape: str = DEFAULT_ESCAPE
    warnings: list[str] = field(default_factory=list)


def error(filename: str, line: int, keyword: str, problem: str) -> ImageError:
    """``file:line: KEYWORD: problem; e.g. `example``` as an ImageError."""
    example = EXAMPLES.get(keyword)
    hint = f"; e.g. `{example}`" if example else ""
    return ImageError(f"{filename}:{line}: {keyword or 'instruction'}: {problem}{hint}")


# BFlags: name -> kind ("string", "bool", "strings") per instruction.
_FLAGS: dict[str, dict[str, str]] = {
    "ADD": {"chown": "string", "chmod": "string", "link": "bool", "keep-git-dir": "bool",
            "checksum": "string", "unpack": "bool", "exclude": "strings"},
    "COPY": {"chown": "string", "from": "string", "chmod": "string", "link": "bool",
             "exclude": "strings", "parents": "bool"},
    "FROM": {"platform": "string"},
    "RUN": {"mount": "strings", "network": "string", "security": "string",
            "device": "strings"},
    "HEALTHCHECK": {"interval": "string", "timeout": "string", "start-period": "string",
                    "start-interval": "string", "retries": "string"},
}


def _parse_flags(keyword: str, raw: list[str]) -> dict[str, Any]:
    """BuildKit's ``BFlags.Parse``: ``--name=value``, ``--bool`` / ``--bool=false``,
    repeatable list flags; ``--`` ends the flags."""
    known = _FLAGS.get(keyword, {})
    out: dict[str, Any] = {}
    for a in raw:
        if a == "--":
            break
        if not a.startswith("--"):
            raise ParseError(f"arg should start with -- : {a}")
        name, has_value, value = a.partition("=")
        kind = known.get(name[2:])
        if kind is None:
            ok = ", ".join(f"--{k}" for k in known) or "none"
            raise ParseError(f"unknown flag: {name} (flags of {keyword}: {ok})")
        if name[2:] in out and kind != "strings":
            raise ParseError(f"duplicate flag specified: {name}")
        if kind == "bool":
            if has_value and value == "":
                raise ParseError(f"missing a value on flag: {name}")
            if value.lower() in ("true", ""):
                out[name[2:]] = True
            elif value.lower() == "false":
                out[name[2:]] = False
            else:
                raise ParseError(f"expecting boolean value for flag {name}, not: {value}")
        elif not has_value:
            raise ParseError(f"missing a value on flag: {name}")
        elif kind == "strings":
            out.setdefault(name[2:], []).append(value)
        else:
            out[name[2:]] = value
    return out


_DURATION_UNITS = {"ns": 1, "us": 1000, "\u00b5s": 1000, "\u03bcs": 1000, "ms": 10**6,
                   "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_MAX = 1 << 63


def go_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` (a port of go/src/time/format.go), in integer
    nanoseconds: ``"1h30m"``, ``"1.5s"``, ``"300ms"``, ``"-2us"``; a bare ``"0"`` is
    allowed, any other number needs a unit. Raises ValueError with Go's message."""
    orig = text
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        i = 0  # leadingInt
        v = 0
        while i < len(s) and "0" <= s[i] <= "9":
            v = v * 10 + ord(s[i]) - 48
            if v > _MAX:
                raise ValueError(f"time: invalid duration {go_quote(orig)}")
            i += 1
        pre = i != 0
        s = s[i:]
        post = False
        f, scale = 0, 1.0
        if s[:1] == ".":  # leadingFraction: digits past int64 are dropped
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    if f > (_MAX - 1) // 10:
                        overflow = True
                    else:
                        y = f * 10 + ord(s[i]) - 48
                        if y > _MAX:
                            overflow = True
                        else:
                            f = y
                            scale *= 10
                i += 1
            post = i != 0
            s = s[i:]
        if not pre and not post:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {go_quote(orig)}")
        unit_name, s = s[:i], s[i:]
        unit = _DURATION_UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"time: unknown unit {go_quote(unit_name)} in duration "
                             f"{go_quote(orig)}")
        if v > _MAX // unit:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        v *= unit
        if f > 0:
            # Go uses float64 here, to be nanosecond-exact for fractions of hours.
            v += int(float(f) * (float(unit) / scale))
            if v > _MAX:
                raise ValueError(f"time: invalid duration {go_quote(orig)}")
        total += v
        if total > _MAX:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
    if neg:
        return -total
    if total > _MAX - 1:
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    return total


def _interval(flags: dict[str, Any], name: str) -> int:
    value = flags.get(name, "")
    if value == "":
        return 0
    try:
        ns = go_duration(value)
    except ValueError as exc:
        raise ParseError(str(exc)) from None
    if ns == 0:
        return 0
    if ns < 10**6:
        raise ParseError(f"Interval {go_quote(name)} cannot be less than 1ms")
    return ns


def _shell_dependent(node: Node, args: list[str], empty_as_none: bool
                     ) -> tuple[list[str] | None, bool]:
    cmd = list(args) if node.json else ([" ".join(args)] if args else [])
    if empty_as_none and not cmd:
        return None, not node.json
    return cmd, not node.json


def _instruction(node: Node, keyword: str) -> Instruction | Stage:
    """One node as an instruction (or a Stage for FROM); raises ParseError."""
    text = node.original
    if node.heredocs:
        text += "\n" + "".join(h.content + h.name + "\n" for h in node.heredocs)
    target = node.sub if keyword == "ONBUILD" and node.sub is not None else node
    ins = Instruction(keyword=keyword, line=node.start_line, end_line=node.end_line, text=text,
                      args=list(target.args), json=target.json, heredocs=list(node.heredocs))
    # BuildKit's parseArg and parseStopSignal never parse flags: they are ignored there.
    flags = {} if keyword in ("ARG", "STOPSIGNAL") else _parse_flags(keyword, node.flags)
    ins.flags = flags
    args = node.args
    if keyword == "FROM":
        if len(args) == 3 and args[1].lower() == "as":
            name = args[2].lower()
            if not _STAGE_NAME.match(name):
                raise ParseError(f"invalid name for build stage: {go_quote(args[2])}, name "
                                 f"can't start with a number or contain symbols")
        elif len(args) != 1:
            raise ParseError("FROM requires either one or three arguments")
        else:
            name = ""
        return Stage(base=args[0], name=name, platform=flags.get("platform", ""),
                     line=node.start_line, text=node.original.strip())
    if keyword in ("ENV", "LABEL"):
        if not args:
            raise ParseError(f"{keyword} requires at least one argument")
        for j in range(0, len(args), 3):
            if not args[j]:
                raise ParseError(f"{keyword} names can not be blank")
            ins.pairs.append((args[j], args[j + 1]))
    elif keyword == "MAINTAINER":
        if len(args) != 1:
            raise ParseError("MAINTAINER requires exactly one argument")
    elif keyword in ("ADD", "COPY"):
        if len(args) < 2:
            raise ParseError(f"{keyword} requires at least two arguments, but only one was "
                             f"provided. Destination could not be determined")
        *srcs, ins.dest = args
        if parse_heredoc(ins.dest) is not None:
            raise ParseError(f"{keyword} cannot accept a heredoc as a destination")
        docs = {h.name: h for h in node.heredocs}
        for src in srcs:
            doc = parse_heredoc(src)
            if doc is not None:
                found = docs.get(doc.name, Heredoc(doc.name))
                ins.contents.append(Heredoc(name=doc.name, content=found.content,
                                            expand=doc.expand, chomp=doc.chomp))
            else:
                ins.sources.append(src)
    elif keyword in ("RUN", "CMD", "ENTRYPOINT"):
        ins.cmdline, ins.prepend_shell = _shell_dependent(node, args, keyword == "ENTRYPOINT")
        if keyword == "RUN":
            network = flags.get("network", "default")
            if network not in ("default", "none", "host"):
                raise ParseError(f"invalid network mode {go_quote(network)}")
            security = flags.get("security", "sandbox")
            if security not in ("insecure", "sandbox"):
                raise ParseError(f"security {go_quote(security)} is not valid")
    elif keyword == "HEALTHCHECK":
        ins.health = _healthcheck(node, flags)
    elif keyword == "EXPOSE":
        if not args:
            raise ParseError("EXPOSE requires at least one argument")
        ins.args = sorted(args)
    elif keyword in ("USER", "WORKDIR", "STOPSIGNAL"):
        if len(args) != 1:
            raise ParseError(f"{keyword} requires exactly one argument")
    elif keyword == "VOLUME":
        if not args:
            raise ParseError("VOLUME requires at least one argument")
        ins.args = [_strip(v) for v in args]
        if any(v == "" for v in ins.args):
            raise ParseError("VOLUME specified can not be an empty string")
    elif keyword == "ARG":
        if not args:
            raise ParseError("ARG requires at least one argument")
        for word in args:
            if "=" in word:
                key, _, value = word.partition("=")
                if not key:
                    raise ParseError("ARG names can not be blank")
                ins.arg_pairs.append((key, value))
            else:
                ins.arg_pairs.append((word, None))
    elif keyword == "SHELL":
        if not args:
            raise ParseError("SHELL requires at least one argument")
        if not node.json:
            raise ParseError(f"SHELL requires the arguments to be in JSON form, e.g. "
                             f"SHELL [\"/bin/sh\", \"-c\"], not {node.original!r}")
    elif keyword == "ONBUILD":
        if node.sub is None:
            raise ParseError("ONBUILD requires at least one argument")
        trigger = node.sub.keyword.upper()
        if trigger == "ONBUILD":
            raise ParseError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trigger in ("MAINTAINER", "FROM"):
            raise ParseError(f"{trigger} isn't allowed as an ONBUILD trigger")
        expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", node.original)
        if node.heredocs:
            expression += "".join("\n" + h.content + h.name for h in node.heredocs)
        ins.expression = expression
    return ins


def _healthcheck(node: Node, flags: dict[str, Any]) -> dict[str, Any]:
    args = node.args
    if not args:
        raise ParseError("HEALTHCHECK requires at least one argument")
    kind = args[0].upper()
    rest = args[1:]
    if kind == "NONE":
        if rest:
            raise ParseError("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise ParseError(f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)")
    cmd = rest if node.json else ([" ".join(rest)] if rest else [])
    if not cmd:
        raise ParseError("Missing command after HEALTHCHECK CMD")
    health: dict[str, Any] = {"Test": ["CMD" if node.json else "CMD-SHELL", *cmd]}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        ns = _interval(flags, flag)
        if ns:
            health[key] = ns
    retries = flags.get("retries", "")
    if retries != "":
        try:
            count = int(retries, 10)
        except ValueError:
            raise ParseError(f"strconv.ParseInt: parsing {go_quote(retries)}: invalid "
                             f"syntax") from None
        if not -2**31 <= count < 2**31:
            raise ParseError(f"strconv.ParseInt: parsing {go_quote(retries)}: value out of "
                             f"range")
        if count < 0:
            raise ParseError(f"--retries cannot be negative ({count})")
        if count:
            health["Retries"] = count
    return health


def parse(text: str, filename: str = "Containerfile") -> Containerfile:
    """The stages of a Containerfile (BuildKit ``instructions.Parse``); raises ImageError
    naming ``file:line`` and the instruction."""
    try:
        result = parse_ast(text)
    except _Located as exc:
        if exc.keyword:
            raise error(filename, exc.line, exc.keyword, str(exc)) from None
        if exc.line and str(exc) != _NO_INSTRUCTIONS:
            raise ImageError(f"{filename}:{exc.line}: {exc}") from None
        raise ImageError(f"{filename}: {exc}; it must start with FROM, e.g. `FROM busybox`"
                         ) from None
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for node in result.nodes:
        parsed = parse_node(node, filename)
        if isinstance(parsed, Stage):
            stages.append(parsed)
        elif not stages:
            if parsed.keyword != "ARG":
                raise error(filename, node.start_line, parsed.keyword,
                            "no build stage in current context: the first instruction must "
                            "be FROM (only ARG may come before it)")
            meta.append(parsed)
        else:
            stages[-1].instructions.append(parsed)
    if not stages:
        raise ImageError(f"{filename}: contains no stages to build; it needs a FROM, e.g. "
                         f"`FROM busybox`")
    return Containerfile(meta, stages, result.escape, result.warnings)


def parse_node(node: Node, filename: str) -> Instruction | Stage:
    """One node as an instruction, its errors placed at ``file:line: KEYWORD``."""
    keyword = node.keyword.upper()
    if keyword not in INSTRUCTIONS:
        supported = ", ".join(INSTRUCTIONS)
        raise ImageError(f"{filename}:{node.start_line}: {node.keyword}: {node.keyword!r} is "
                         f"not supported: it is not a Dockerfile instruction (they are: "
                         f"{supported})")
    try:
        return _instruction(node, keyword)
    except ParseError as exc:
        raise error(filename, node.start_line, keyword, str(exc)) from None


def parse_trigger(expression: str, filename: str, line: int) -> Instruction:
    """An ONBUILD trigger (``RUN echo hi``) as the instruction it runs, placed at the
    ``FROM`` line of the stage that runs it (as BuildKit does)."""
    try:
        result = parse_ast(expression)
    except _Located as exc:
        raise ImageError(f"{filename}:{line}: ONBUILD trigger {expression!r}: {exc}") from None
    if len(result.nodes) != 1:
        raise ImageError(f"{filename}:{line}: ONBUILD trigger {expression!r}: should be a "
                         f"single expression")
    node = result.nodes[0]
    node.start_line = node.end_line = line
    parsed = parse_node(node, filename)
    if isinstance(parsed, Stage):
        raise ImageError(f"{filename}:{line}: FROM isn't allowed as an ONBUILD trigger")
    return parsed
