"""Variable expansion and word splitting as BuildKit's Dockerfile frontend does it.

A port of moby/buildkit ``frontend/dockerfile/shell/lex.go`` (``Lex``, ``shellWord``): the
rules Docker applies to the arguments of ``ADD``, ``ARG``, ``COPY``, ``ENV``, ``EXPOSE``,
``FROM``, ``LABEL``, ``STOPSIGNAL``, ``USER``, ``VOLUME`` and ``WORKDIR`` (``RUN``, ``CMD``
and ``ENTRYPOINT`` are left to the shell in the box).

- ``$NAME``, ``${NAME}``; positional (``$1``) and special (``$@ $* $# $? $- $$ $! $0``)
  parameters are never set.
- ``${NAME:-word}`` / ``${NAME-word}``: ``word`` when NAME is unset or empty / unset.
  ``${NAME:+word}`` / ``${NAME+word}``: ``word`` when NAME is set and not empty / set.
  ``${NAME:?msg}`` / ``${NAME?msg}``: an error when unset or empty / unset.
  ``${NAME#pat}``, ``${NAME##pat}``, ``${NAME%pat}``, ``${NAME%%pat}``: shortest / longest
  prefix or suffix removed (``*`` and ``?`` wildcards); ``${NAME/pat/repl}`` and
  ``${NAME//pat/repl}``: first / every match replaced.
  ``word`` may itself hold variables and nested ``${...}``.
- Single quotes keep everything literal; double quotes keep everything but ``$`` and the
  escape character, which escapes only ``"``, ``$`` and itself there. Outside quotes the
  escape character (``\\``, or ````` after ``# escape=`````) escapes any character.
- ``process_word`` keeps the spaces of the result (one word); ``process_words`` splits it at
  unquoted white space *after* expansion, as BuildKit's ``ProcessWords`` does.

Errors raise ``ShellLexError`` (a ``ValueError``) worded as BuildKit's, e.g.
``failed to process "${A": syntax error: missing '}'``.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Lex", "LexResult", "ShellLexError"]

_EOF = ""  # what the scanner returns at the end (never a character of the input)
# Go's unicode.IsSpace: the Latin-1 spaces, then the Unicode White_Space property.
_GO_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                       "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# Special parameters (POSIX shell, 2.5.2): never set in a Dockerfile.
_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class ShellLexError(ValueError):
    """A word BuildKit's lexer refuses (unterminated quote, bad ``${...}``, ``${A?msg}``)."""


def go_is_space(ch: str) -> bool:
    """Go's ``unicode.IsSpace`` for one character."""
    return ch in _GO_SPACES


def _is_letter(ch: str) -> bool:
    return ch.isalpha()


def _is_digit(ch: str) -> bool:  # Go's unicode.IsDigit: category Nd
    return unicodedata.category(ch) == "Nd"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(text: str) -> str:
    """``text`` as Go's ``strconv.Quote`` writes it (``%q``): printable characters as they
    are, the usual backslash escapes, ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN`` for the rest."""
    out = ['"']
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or unicodedata.category(ch)[0] in "LMNPS":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


@dataclass
class LexResult:
    """What one ``process``: the word, the words, and which variables were looked up."""

    result: str
    words: list[str]
    matched: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)


class _Scanner:
    """Go's text/scanner as lex.go uses it: ``peek`` and ``next``, one character at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch


class _Words:
    """lex.go's ``wordsStruct``: splits at white space, except in raw (quoted) text."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if go_is_space(ch) and self.in_word:
            if self.buf:
                self.words.append("".join(self.buf))
                self.buf = []
                self.in_word = False
        elif not go_is_space(ch):
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.buf.append(ch)
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def get_words(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf = []
            self.in_word = False
        return self.words


class Lex:
    """BuildKit's ``shell.Lex``.

    ``escape_token`` is ``\\`` or ````` (the ``# escape=`` parser directive). The switches
    are BuildKit's: ``raw_quotes`` keeps quote characters in the result, ``raw_escapes``
    keeps escape characters, ``skip_process_quotes`` treats quotes as ordinary characters
    (heredoc bodies), ``skip_unset_env`` leaves references to unset variables as written.
    """

    def __init__(self, escape_token: str = "\\", *, raw_quotes: bool = False,
                 raw_escapes: bool = False, skip_process_quotes: bool = False,
                 skip_unset_env: bool = False) -> None:
        self.escape_token = escape_token
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset_env = skip_unset_env

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """``word`` with its variables expanded and quotes removed, spaces kept."""
        return self.process(word, env).result

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """``word`` expanded, then split at unquoted white space (BuildKit ``ProcessWords``)."""
        return self.process(word, env).words

    def process(self, word: str, env: Mapping[str, str]) -> LexResult:
        """Both results, and the names looked up that were set (``matched``) or not."""
        sw = _ShellWord(self, word, env)
        try:
            result, words = sw.process_stop_on(_EOF, self.raw_escapes)
        except ShellLexError as exc:
            raise ShellLexError(f"failed to process {go_quote(word)}: {exc}") from None
        return LexResult(result, words, sw.matches, sw.nonmatches)


class _ShellWord:
    def __init__(self, lex: Lex, word: str, env: Mapping[str, str]) -> None:
        self.lex = lex
        self.env = env
        self.scanner = _Scanner(word)
        self.raw_escapes = lex.raw_escapes
        self.matches: set[str] = set()
        self.nonmatches: set[str] = set()

    def process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Up to ``stop`` (consumed) or the end: (the word, the words)."""
        result: list[str] = []
        words = _Words()
        special = {"$": self._dollar, "<": self._possible_heredoc}
        if not self.lex.skip_process_quotes:
            special["'"] = self._single_quote
            special['"'] = self._double_quote
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            scanner = self.scanner
            escape = self.lex.escape_token
            while scanner.peek() != _EOF:
                ch = scanner.peek()
                if stop != _EOF and ch == stop:
                    scanner.next()
                    return "".join(result), words.get_words()
                fn = special.get(ch)
                if fn is not None:
                    tmp = fn()
                    result.append(tmp)
                    if ch == "$":
                        words.add_string(tmp)
                    else:
                        words.add_raw_string(tmp)
                    continue
                ch = scanner.next()
                if ch == escape:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    # the escape character escapes the next one (at the end: nothing)
                    ch = scanner.next()
                    if ch == _EOF:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
            if stop != _EOF:
                raise ShellLexError(f"unexpected end of statement while looking for matching "
                                    f"{stop}")
            return "".join(result), words.get_words()
        finally:
            self.raw_escapes = saved

    def _single_quote(self) -> str:
        # Everything up to the next single quote is literal; a single quote cannot be
        # escaped inside single quotes (sh(1), "Single Quotes").
        out: list[str] = []
        ch = self.scanner.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            ch = self.scanner.next()
            if ch == _EOF:
                raise ShellLexError("unexpected end of statement while looking for matching "
                                    "single-quote")
            if ch == "'":
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double_quote(self) -> str:
        # Literal except $ (expanded) and the escape character, which escapes only
        # ", $ and itself (sh(1), "Double Quotes").
        out: list[str] = []
        scanner = self.scanner
        escape = self.lex.escape_token
        ch = scanner.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            nxt = scanner.peek()
            if nxt == _EOF:
                raise ShellLexError("unexpected end of statement while looking for matching "
                                    "double-quote")
            if nxt == '"':
                ch = scanner.next()
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if nxt == "$":
                out.append(self._dollar())
                continue
            ch = scanner.next()
            if ch == escape:
                if self.raw_escapes:
                    out.append(ch)
                after = scanner.peek()
                if after == _EOF:
                    continue  # an escape at the end of the word is dropped
                if after in ('"', "$", escape):
                    ch = scanner.next()
            out.append(ch)

    def _dollar(self) -> str:
        scanner = self.scanner
        scanner.next()
        if scanner.peek() != "{":  # $NAME
            name = self._name()
            if name == "":
                return "$"
            value, found = self._get(name)
            if not found and self.lex.skip_unset_env:
                return "$" + name
            return value
        scanner.next()
        first = scanner.peek()
        if first == _EOF:
            raise ShellLexError("syntax error: missing '}'")
        if first in "{}:":
            raise ShellLexError("syntax error: bad substitution")
        name = self._name()
        ch = scanner.next()
        chs = ch or "\ufffd"
        if ch == "}":
            value, found = self._get(name)
            if not found and self.lex.skip_unset_env:
                return "${" + name + "}"
            return value
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = scanner.next()
            chs += ch or "\ufffd"
        elif ch == "/":
            return self._replace(name)
        elif ch not in ("+", "-", "?", "#", "%"):
            raise ShellLexError(f"unsupported modifier ({chs}) in substitution")
        raw = ch in ("#", "%")
        if null_is_unset and raw:
            raise ShellLexError(f"unsupported modifier ({chs}) in substitution")
        word = self._until("}", raw, "syntax error: missing '}'")
        value, found = self._get(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + chs + word + "}"
        empty = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else value
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if not found:
                raise ShellLexError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise ShellLexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("%", "#"):
            greedy = False
            if word[:1] == ch:
                greedy = True
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise ShellLexError(f"unsupported modifier ({chs}) in substitution")

    def _until(self, stop: str, raw_escapes: bool, missing: str) -> str:
        """The word up to ``stop``; ``missing`` when the input ends first."""
        try:
            return self.process_stop_on(stop, raw_escapes)[0]
        except ShellLexError:
            if self.scanner.peek() == _EOF:
                raise ShellLexError(missing) from None
            raise

    def _replace(self, name: str) -> str:
        scanner = self.scanner
        replace_all = scanner.peek() == "/"
        if replace_all:
            scanner.next()
        pattern = self._until("/", True, "syntax error: missing '/' in ${}")
        replacement = self._until("}", True, "syntax error: missing '}'")
        value, found = self._get(name)
        if self.lex.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        try:
            rx = shell_pattern_regex(pattern, greedy=True, anchored=False)
        except ShellLexError as exc:
            raise ShellLexError(f"invalid pattern ({pattern}) in substitution: {exc}") from None
        if replace_all:
            return _go_replace_all(rx, value, replacement)
        m = rx.search(value)
        if m is not None:
            value = value[:m.start()] + replacement + value[m.end():]
        return value

    def _name(self) -> str:
        """A name (letters, digits, ``_``), all the digits of a positional parameter, or one
        special parameter character."""
        scanner = self.scanner
        name: list[str] = []
        while scanner.peek() != _EOF:
            ch = scanner.peek()
            if not name and _is_digit(ch):
                while scanner.peek() != _EOF and _is_digit(scanner.peek()):
                    name.append(scanner.next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return scanner.next()
            if not _is_letter(ch) and not _is_digit(ch) and ch != "_":
                break
            name.append(scanner.next())
        return "".join(name)

    def _possible_heredoc(self) -> str:
        scanner = self.scanner
        scanner.next()
        if scanner.peek() != "<":
            return "<"  # not a heredoc
        scanner.next()
        space: list[str] = []
        while scanner.peek() in ("\t", "\r", " "):
            space.append(scanner.next())
        return "<<" + "".join(space)

    def _get(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matches.add(name)
            return self.env[name], True
        self.nonmatches.add(name)
        return "", False


def shell_pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell wildcard pattern (``?`` one character, ``*`` the shortest or, ``greedy``, the
    longest string; no bracket expressions) as a regular expression (lex.go
    ``convertShellPatternToRegex``)."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
            continue
        if tok == "?":
            out.append(".")
            continue
        if tok == "\\":
            # } and / are escaped to be part of ${...}; the escape is not part of the pattern
            if i < len(pattern) and pattern[i] in "}/":
                continue
            nxt = pattern[i] if i < len(pattern) else ""
            i += 1
            if nxt not in ("*", "?", "\\") or nxt == "":
                raise ShellLexError(f"invalid escape '\\{nxt}'")
            out.append("\\" + nxt)
            continue
        # regular expression characters are escaped (closing ones too, for consistency)
        out.append("\\" + tok if tok in "[]{}.+()|^$" else tok)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    try:
        rx = shell_pattern_regex(pattern, greedy=greedy, anchored=True)
    except ShellLexError as exc:
        raise ShellLexError(f"invalid pattern ({pattern}) in substitution: {exc}") from None
    m = rx.search(value)
    return value[m.end():] if m is not None else value


def reverse_pattern(pattern: str) -> str:
    """``pattern`` reversed, keeping each escape before the character it escapes."""
    out = list(pattern)
    last = len(pattern) - 1
    i = 0
    while i <= last:
        tok = pattern[i]
        at = last - i
        if tok == "\\" and i != last:
            out[at - 1] = tok
            out[at] = pattern[i + 1]
            i += 2
        else:
            out[at] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regular expression cannot find the shortest rightmost match: reverse both the
    # pattern and the value and trim a prefix instead (as lex.go does).
    return _trim_prefix(reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _go_replace_all(rx: re.Pattern[str], src: str, template: str) -> str:
    """Go's ``Regexp.ReplaceAllString``: ``$name``/``${name}`` in ``template`` expanded, and
    an empty match right after a match not replaced (Python's ``re.sub`` differs there)."""
    out: list[str] = []
    last_end = 0
    search = 0
    while search <= len(src):
        m = rx.search(src, search)
        if m is None:
            break
        start, end = m.span()
        out.append(src[last_end:start])
        if end > last_end or start == 0:
            out.append(_go_expand(template, m))
        last_end = end
        if search + 1 > end:
            search += 1
        else:
            search = end
    out.append(src[last_end:])
    return "".join(out)


def _go_expand(template: str, m: re.Match[str]) -> str:
    """Go's ``Regexp.expand`` for a pattern without groups: ``$$`` is ``$``, ``$0``/``${0}``
    the match, any other valid ``$name`` empty, an invalid one literal."""
    out: list[str] = []
    i = 0
    while i < len(template):
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        if template[j + 1:j + 2] == "$":
            out.append("$")
            i = j + 2
            continue
        name, consumed = _go_template_name(template[j + 1:])
        if not name:
            out.append("$")
            i = j + 1
            continue
        i = j + 1 + consumed
        if name == "0":  # the patterns have no groups: only $0, the whole match, has a value
            out.append(m.group(0))
    return "".join(out)


def _go_template_name(text: str) -> tuple[str, int]:
    brace = text.startswith("{")
    body = text[1:] if brace else text
    i = 0
    while i < len(body) and (_is_letter(body[i]) or _is_digit(body[i]) or body[i] == "_"):
        i += 1
    if i == 0:
        return "", 0
    if brace:
        if i >= len(body) or body[i] != "}":
            return "", 0
        return body[:i], i + 2
    return body[:i], i
