"""build.shell_lex: BuildKit's Dockerfile variable expansion and word splitting.

Every table here is moby/buildkit's own test data for frontend/dockerfile/shell/lex.go
(``envVarTest``, ``wordsTest`` and the cases of ``lex_test.go``), converted to Python; the
expected values are BuildKit's. The module is a port of lex.go, so a row that fails here is
a difference from what ``docker build`` does.
"""
from __future__ import annotations

import pytest

from pytest_nsbox.build.shell_lex import Lex, ShellLexError, reverse_pattern, \
    shell_pattern_regex

# moby/buildkit frontend/dockerfile/shell/envVarTest, rows for all platforms (A) and Unix
# (U), as (source, expected); "error" means ProcessWord fails.
ENV_VAR_TEST = [
    ('hello', 'hello'),
    ("he'll'o", 'hello'),
    ("he'llo", 'error'),
    ("he\\'llo", "he'llo"),
    ("he\\\\'llo", 'error'),
    ('abc\\tdef', 'abctdef'),
    ('"abc\\tdef"', 'abc\\tdef'),
    ('"abc\\\\tdef"', 'abc\\tdef'),
    ("'abc\\tdef'", 'abc\\tdef'),
    ('hello\\', 'hello'),
    ('hello\\\\', 'hello\\'),
    ('"hello', 'error'),
    ('"hello\\"', 'error'),
    ('"hel\'lo"', "hel'lo"),
    ("'hello", 'error'),
    ("'hello\\'", 'hello\\'),
    ("'hello\\there'", 'hello\\there'),
    ("'hello\\\\there'", 'hello\\\\there'),
    ('"\'\'"', "''"),
    ('$.', '$.'),
    ('he$1x', 'hex'),
    ('he$.x', 'he$.x'),
    ('he$pwd.', 'he.'),
    ('he$PWD', 'he/home'),
    ('he\\$PWD', 'he$PWD'),
    ('he\\\\$PWD', 'he\\/home'),
    ('"he\\$PWD"', 'he$PWD'),
    ('"he\\\\$PWD"', 'he\\/home'),
    ('\\${}', '${}'),
    ('\\${}aaa', '${}aaa'),
    ('he\\${}', 'he${}'),
    ('he\\${}xx', 'he${}xx'),
    ('${}', 'error'),
    ('${}aaa', 'error'),
    ('he${}', 'error'),
    ('he${}xx', 'error'),
    ('he${hi}', 'he'),
    ('he${hi}xx', 'hexx'),
    ('he${PWD}', 'he/home'),
    ('he${.}', 'error'),
    ('he${XXX:-000}xx', 'he000xx'),
    ('he${PWD:-000}xx', 'he/homexx'),
    ('he${XXX:-$PWD}xx', 'he/homexx'),
    ('he${XXX:-${PWD:-yyy}}xx', 'he/homexx'),
    ('he${XXX:-${YYY:-yyy}}xx', 'heyyyxx'),
    ('he${XXX:YYY}', 'error'),
    ('he${XXX?}', 'error'),
    ('he${XXX:?}', 'error'),
    ('he${PWD?}', 'he/home'),
    ('he${PWD:?}', 'he/home'),
    ('he${NULL?}', 'he'),
    ('he${NULL:?}', 'error'),
    ('he${XXX:+${PWD}}xx', 'hexx'),
    ('he${PWD:+${XXX}}xx', 'hexx'),
    ('he${PWD:+${SHELL}}xx', 'hebashxx'),
    ('he${XXX:+000}xx', 'hexx'),
    ('he${PWD:+000}xx', 'he000xx'),
    ("'he${XX}'", 'he${XX}'),
    ('"he${PWD}"', 'he/home'),
    ('"he\'$PWD\'"', "he'/home'"),
    ('"$PWD"', '/home'),
    ("'$PWD'", '$PWD'),
    ("'\\$PWD'", '\\$PWD'),
    ('\'"hello"\'', '"hello"'),
    ('he\\$PWD', 'he$PWD'),
    ('"he\\$PWD"', 'he$PWD'),
    ("'he\\$PWD'", 'he\\$PWD'),
    ('he${PWD', 'error'),
    ('he${PWD:=000}xx', 'error'),
    ('he${PWD:+${PWD}:}xx', 'he/home:xx'),
    ('he${XXX:-\\$PWD:}xx', 'he$PWD:xx'),
    ('he${XXX:-\\${PWD}z}xx', 'he${PWDz}xx'),
    ('안녕하세요', '안녕하세요'),
    ("안'녕'하세요", '안녕하세요'),
    ("안'녕하세요", 'error'),
    ("안녕\\'하세요", "안녕'하세요"),
    ("안\\\\'녕하세요", 'error'),
    ('안녕\\t하세요', '안녕t하세요'),
    ('"안녕\\t하세요"', '안녕\\t하세요'),
    ("'안녕\\t하세요", 'error'),
    ('안녕하세요\\', '안녕하세요'),
    ('안녕하세요\\\\', '안녕하세요\\'),
    ('"안녕하세요', 'error'),
    ('"안녕하세요\\"', 'error'),
    ('"안녕\'하세요"', "안녕'하세요"),
    ("'안녕하세요", 'error'),
    ("'안녕하세요\\'", '안녕하세요\\'),
    ('안녕$1x', '안녕x'),
    ('안녕$.x', '안녕$.x'),
    ('안녕$pwd.', '안녕.'),
    ('안녕$PWD', '안녕/home'),
    ('안녕\\$PWD', '안녕$PWD'),
    ('안녕\\\\$PWD', '안녕\\/home'),
    ('안녕\\${}', '안녕${}'),
    ('안녕\\${}xx', '안녕${}xx'),
    ('안녕${}', 'error'),
    ('안녕${}xx', 'error'),
    ('안녕${hi}', '안녕'),
    ('안녕${hi}xx', '안녕xx'),
    ('안녕${PWD}', '안녕/home'),
    ('안녕${.}', 'error'),
    ('안녕${XXX:-000}xx', '안녕000xx'),
    ('안녕${PWD:-000}xx', '안녕/homexx'),
    ('안녕${XXX:-$PWD}xx', '안녕/homexx'),
    ('안녕${XXX:-${PWD:-yyy}}xx', '안녕/homexx'),
    ('안녕${XXX:-${YYY:-yyy}}xx', '안녕yyyxx'),
    ('안녕${XXX:YYY}', 'error'),
    ('안녕${XXX:+${PWD}}xx', '안녕xx'),
    ('안녕${PWD:+${XXX}}xx', '안녕xx'),
    ('안녕${PWD:+${SHELL}}xx', '안녕bashxx'),
    ('안녕${XXX:+000}xx', '안녕xx'),
    ('안녕${PWD:+000}xx', '안녕000xx'),
    ("'안녕${XX}'", '안녕${XX}'),
    ('"안녕${PWD}"', '안녕/home'),
    ('"안녕\'$PWD\'"', "안녕'/home'"),
    ('\'"안녕"\'', '"안녕"'),
    ('안녕\\$PWD', '안녕$PWD'),
    ('"안녕\\$PWD"', '안녕$PWD'),
    ("'안녕\\$PWD'", '안녕\\$PWD'),
    ('안녕${PWD', 'error'),
    ('안녕${PWD:=000}xx', 'error'),
    ('안녕${PWD:+${PWD}:}xx', '안녕/home:xx'),
    ('안녕${XXX:-\\$PWD:}xx', '안녕$PWD:xx'),
    ('안녕${XXX:-\\${PWD}z}xx', '안녕${PWDz}xx'),
    ('$KOREAN', '한국어'),
    ('안녕$KOREAN', '안녕한국어'),
    ('${{aaa}', 'error'),
    ('${aaa}}', '}'),
    ('${aaa', 'error'),
    ('${{aaa:-bbb}', 'error'),
    ('${aaa:-bbb}}', 'bbb}'),
    ('${aaa:-bbb', 'error'),
    ('${aaa:-bbb}', 'bbb'),
    ('${aaa:-${bbb:-ccc}}', 'ccc'),
    ('${aaa:-bbb ${foo}', 'error'),
    ('${aaa:-bbb {foo}', 'bbb {foo'),
    ('${:}', 'error'),
    ('${:-bbb}', 'error'),
    ('${:+bbb}', 'error'),
    ('$1', ''),
    ('${1}', ''),
    ('${1:+bbb}', ''),
    ('${1:-bbb}', 'bbb'),
    ('$2', ''),
    ('${2}', ''),
    ('${2:+bbb}', ''),
    ('${2:-bbb}', 'bbb'),
    ('$3', ''),
    ('${3}', ''),
    ('${3:+bbb}', ''),
    ('${3:-bbb}', 'bbb'),
    ('$4', ''),
    ('${4}', ''),
    ('${4:+bbb}', ''),
    ('${4:-bbb}', 'bbb'),
    ('$5', ''),
    ('${5}', ''),
    ('${5:+bbb}', ''),
    ('${5:-bbb}', 'bbb'),
    ('$6', ''),
    ('${6}', ''),
    ('${6:+bbb}', ''),
    ('${6:-bbb}', 'bbb'),
    ('$7', ''),
    ('${7}', ''),
    ('${7:+bbb}', ''),
    ('${7:-bbb}', 'bbb'),
    ('$8', ''),
    ('${8}', ''),
    ('${8:+bbb}', ''),
    ('${8:-bbb}', 'bbb'),
    ('$9', ''),
    ('${9}', ''),
    ('${9:+bbb}', ''),
    ('${9:-bbb}', 'bbb'),
    ('$999', ''),
    ('${999}', ''),
    ('${999:+bbb}', ''),
    ('${999:-bbb}', 'bbb'),
    ('$999aaa', 'aaa'),
    ('${999}aaa', 'aaa'),
    ('${999:+bbb}aaa', 'aaa'),
    ('${999:-bbb}aaa', 'bbbaaa'),
    ('$001', ''),
    ('${001}', ''),
    ('${001:+bbb}', ''),
    ('${001:-bbb}', 'bbb'),
    ('$001aaa', 'aaa'),
    ('${001}aaa', 'aaa'),
    ('${001:+bbb}aaa', 'aaa'),
    ('${001:-bbb}aaa', 'bbbaaa'),
    ('$@', ''),
    ('${@}', ''),
    ('${@:+bbb}', ''),
    ('${@:-bbb}', 'bbb'),
    ('$@@@', '@@'),
    ('$@aaa', 'aaa'),
    ('${@}aaa', 'aaa'),
    ('${@:+bbb}aaa', 'aaa'),
    ('${@:-bbb}aaa', 'bbbaaa'),
    ('$*', ''),
    ('${*}', ''),
    ('${*:+bbb}', ''),
    ('${*:-bbb}', 'bbb'),
    ('$#', ''),
    ('${#}', ''),
    ('${#:+bbb}', ''),
    ('${#:-bbb}', 'bbb'),
    ('$?', ''),
    ('${?}', ''),
    ('${?:+bbb}', ''),
    ('${?:-bbb}', 'bbb'),
    ('$-', ''),
    ('${-}', ''),
    ('${-:+bbb}', ''),
    ('${-:-bbb}', 'bbb'),
    ('$$', ''),
    ('${$}', ''),
    ('${$:+bbb}', ''),
    ('${$:-bbb}', 'bbb'),
    ('$!', ''),
    ('${!}', ''),
    ('${!:+bbb}', ''),
    ('${!:-bbb}', 'bbb'),
    ('$0', ''),
    ('${0}', ''),
    ('${0:+bbb}', ''),
    ('${0:-bbb}', 'bbb'),
]

# moby/buildkit frontend/dockerfile/shell/wordsTest: ("ENV", "k=v") adds to the
# environment for the rows after it; other rows are (source, the words ProcessWords gives).
WORDS_TEST = [
    ('hello', ['hello']),
    ('hello${hi}bye', ['hellobye']),
    ('ENV', 'hi=hi'),
    ('hello${hi}bye', ['hellohibye']),
    ('ENV', 'space=abc  def'),
    ('hello${space}bye', ['helloabc', 'defbye']),
    ('hello"${space}"bye', ['helloabc  defbye']),
    ('hello "${space}"bye', ['hello', 'abc  defbye']),
    ('ENV', 'leading=  ab c'),
    ('hello${leading}def', ['hello', 'ab', 'cdef']),
    ('hello"${leading}" def', ['hello  ab c', 'def']),
    ('hello"${leading}"', ['hello  ab c']),
    ('hello${leading}', ['hello', 'ab', 'c']),
    ('ENV', 'trailing=ab c   '),
    ('hello${trailing}', ['helloab', 'c']),
    ('hello${trailing}d', ['helloab', 'c', 'd']),
    ('hello"${trailing}"d', ['helloab c   d']),
    ('hel"lo${trailing}"', ['helloab c   ']),
    ('hello" there  "', ['hello there  ']),
    ('hello there', ['hello', 'there']),
    ('hello\\ there', ['hello there']),
    ('hello" there', ['error']),
    ('hello\\" there', ['hello"', 'there']),
    ('hello"\\\\there"', ['hello\\there']),
    ('hello"\\there"', ['hello\\there']),
    ("hello'\\\\there'", ['hello\\\\there']),
    ("hello'\\there'", ['hello\\there']),
    ("hello'$there'", ['hello$there']),
]

ENV_VAR_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


@pytest.mark.parametrize("source, expected", ENV_VAR_TEST)
def test_buildkit_env_var_table(source: str, expected: str) -> None:
    """moby/buildkit shell/lex_test.go TestShellParser4EnvVars over shell/envVarTest."""
    lex = Lex("\\")
    if expected == "error":
        with pytest.raises(ShellLexError, match="^failed to process "):
            lex.process_word(source, ENV_VAR_ENV)
    else:
        assert lex.process_word(source, ENV_VAR_ENV) == expected


def test_buildkit_words_table() -> None:
    """moby/buildkit shell/lex_test.go TestShellParser4Words over shell/wordsTest: words are
    split after expansion, quoted spaces and escaped spaces stay in their word."""
    env: dict[str, str] = {}
    lex = Lex("\\")
    for source, expected in WORDS_TEST:
        if source == "ENV":
            assert isinstance(expected, str)
            key, _, value = expected.partition("=")
            env[key] = value
            continue
        try:
            got = lex.process_words(source, env)
        except ShellLexError:
            got = ["error"]
        assert got == expected, source


# moby/buildkit shell/lex_test.go TestProcessWithMatches: (input, env, expected or None for
# an error, names looked up that were set, names looked up that were not).
MATCHES = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set()),
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx  ccc",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx bbb ccc",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:-}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO:-}", {}, "", set(), {"FOO"}),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa bbb ",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa  ",
     {"FOO", "BAR"}, {"BAZ"}),
    ("${FOO?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", {"FOO": "xxx", "BAR": ""}, "", {"BAR"}, set()),
    ("${BAZ?ccc}", {"FOO": "xxx", "BAR": ""}, None, set(), set()),
    ("${FOO:?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${BAR:?bbb}", {"FOO": "xxx", "BAR": ""}, None, set(), set()),
    ("${BAZ:?ccc}", {"FOO": "xxx", "BAR": ""}, None, set(), set()),
    ("${BAZ:?}", {"FOO": "xxx", "BAR": ""}, None, set(), set()),
    ("${FOO=aaa}", {"FOO": "xxx", "BAR": ""}, None, set(), set()),
    ("${FOO=:aaa}", {"FOO": "xxx", "BAR": ""}, None, set(), set()),
    ("${FOO=}", {}, None, set(), set()),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set()),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set()),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set()),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set()),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set()),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO:#}", {}, None, set(), set()),
    ("${FOO:##}", {}, None, set(), set()),
    ("${FOO:%}", {}, None, set(), set()),
    ("${FOO:%%}", {}, None, set(), set()),
    ("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
     "/foo.*/*.txt - /foo..*.txt", {"FOO", "NEEDLE"}, set()),
    ("${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}", {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
     "/tmp/bar.txt - /bar.txt", {"FOO", "NEEDLE"}, set()),
    ("${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
     {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
     "/foo/b/c.txt - /foo/c.txt", {"FOO", "NEEDLE", "REPLACEMENT"}, set()),
    ("${FOO/$NEEDLE/$REPLACEMENT}",
     {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
     "https://google.de", {"FOO", "NEEDLE", "REPLACEMENT"}, set()),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt", {"FOO"}, set()),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}, set()),
    ("${FOO//ww}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO//}", {"FOO": "xxyy"}, None, set(), set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
]


@pytest.mark.parametrize("source, env, expected, matched, unmatched", MATCHES)
def test_buildkit_process_with_matches(source: str, env: dict[str, str],
                                       expected: str | None, matched: set[str],
                                       unmatched: set[str]) -> None:
    """moby/buildkit shell/lex_test.go TestProcessWithMatches: modifiers, patterns, and which
    variables a word used (what makes an ARG "used" for the build cache)."""
    lex = Lex("\\")
    if expected is None:
        with pytest.raises(ShellLexError):
            lex.process(source, env)
        return
    result = lex.process(source, env)
    assert result.result == expected
    assert result.matched == matched
    assert result.unmatched == unmatched


def test_buildkit_mandatory_variables() -> None:
    """moby/buildkit shell/lex_test.go TestShellParserMandatoryEnvVars: ``${V:?msg}`` fails
    for unset or empty, ``${V?msg}`` only for unset; the message is expanded."""
    lex = Lex("\\")
    set_env, empty_env, unset_env = ({"VAR": "plain", "ARG": "x"}, {"VAR": "", "ARG": "x"},
                                     {"ARG": "x"})
    assert lex.process_word("${VAR:?message here$ARG}", set_env) == "plain"
    for env in (empty_env, unset_env):
        with pytest.raises(ShellLexError, match="VAR: message herex"):
            lex.process_word("${VAR:?message here$ARG}", env)
    assert lex.process_word("${VAR?message here$ARG}", set_env) == "plain"
    assert lex.process_word("${VAR?message here$ARG}", empty_env) == ""
    with pytest.raises(ShellLexError, match="VAR: message herex"):
        lex.process_word("${VAR?message here$ARG}", unset_env)


def test_buildkit_platform_release_name() -> None:
    """moby/buildkit shell/lex_test.go TestProcessWithMatchesPlatform: a nested ``${:+}``
    inside a word."""
    release = ("something-${VERSION}.${TARGETOS}-${TARGETARCH}"
               "${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz")
    lex = Lex("\\")
    base = {"VERSION": "v1.2.3", "TARGETOS": "linux"}
    assert lex.process_word(release, {**base, "TARGETARCH": "arm", "TARGETVARIANT": "v7"}) \
        == "something-v1.2.3.linux-arm-v7.tar.gz"
    assert lex.process_word(release, {**base, "TARGETARCH": "arm64", "TARGETVARIANT": ""}) \
        == "something-v1.2.3.linux-arm64.tar.gz"
    assert lex.process_word(release, {**base, "TARGETARCH": "arm64"}) \
        == "something-v1.2.3.linux-arm64.tar.gz"


@pytest.mark.parametrize("pattern, regex", [
    ("*", "^.*"), ("?", "^."), ("\\*", "^\\*"),
    ("(()[]{\\}^$.\\*\\?|\\\\", "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\"),
])
def test_buildkit_shell_pattern_to_regex(pattern: str, regex: str) -> None:
    """moby/buildkit shell/lex_test.go TestConvertShellPatternToRegex."""
    assert shell_pattern_regex(pattern, greedy=True, anchored=True).pattern == regex


@pytest.mark.parametrize("pattern", ["\\", "\\x", "\\\\\\"])
def test_buildkit_shell_pattern_bad_escapes(pattern: str) -> None:
    """moby/buildkit shell/lex_test.go TestConvertShellPatternToRegex (invalid escapes)."""
    with pytest.raises(ShellLexError, match="invalid escape"):
        shell_pattern_regex(pattern, greedy=True, anchored=True)


@pytest.mark.parametrize("pattern, reversed_", [
    ("a\\*c", "c\\*a"), ("\\\\\\ab", "b\\a\\\\"), ("ab\\", "\\ba"),
    ("👽\\🚀🖖", "🖖\\🚀👽"), ("\\\\b", "b\\\\"),
])
def test_buildkit_reverse_pattern(pattern: str, reversed_: str) -> None:
    """moby/buildkit shell/lex_test.go TestReversePattern (how ``${V%pat}`` finds the
    shortest suffix)."""
    assert reverse_pattern(pattern) == reversed_


def test_issue_default_word_holds_a_variable() -> None:
    """The failing input of issue 9 item 2: ``ENV D=stable`` then ``ENV T=${UNSET:-$D}``
    gives T=stable (moby/buildkit shell/lex.go processDollar expands the word after ``:-``
    with processStopOn, so variables in it are expanded)."""
    lex = Lex("\\")
    assert lex.process_word("${UNSET:-$D}", {"D": "stable"}) == "stable"
    assert lex.process_word("${UNSET-${D}}", {"D": "stable"}) == "stable"
    assert lex.process_word("${D:+x${D}y}", {"D": "stable"}) == "xstabley"
    assert lex.process_word("${D+${UNSET:-$D/$D}}", {"D": "s"}) == "s/s"


def test_backtick_escape_token() -> None:
    """With ``# escape=``` (moby/buildkit parser/directives.go), lex.go escapes with the
    backtick; a backslash is then an ordinary character (Windows paths)."""
    lex = Lex("`")
    assert lex.process_word("C:\\dir\\$NAME", {"NAME": "x"}) == "C:\\dir\\x"
    assert lex.process_word("`$NAME", {"NAME": "x"}) == "$NAME"
    assert lex.process_word('"a`"b"', {}) == 'a"b'


def test_raw_modes_as_the_heredoc_parser_uses_them() -> None:
    """lex.go's switches as moby/buildkit parser.go heredocsFromLine sets them (RawQuotes,
    RawEscapes, SkipUnsetEnv): quotes, escapes and unset variables survive as written."""
    lex = Lex("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert lex.process_words("RUN <<'EOF' cat \\$X $Y ${Z:-d}", {}) == \
        ["RUN", "<<'EOF'", "cat", "\\$X", "$Y", "${Z:-d}"]
    assert Lex("\\", skip_process_quotes=True).process_word("'$A' \"$A\"", {"A": "1"}) == \
        "'1' \"1\""


def test_replace_all_follows_go_regexp_for_empty_matches() -> None:
    """``${V//*/x}``: Go's Regexp.ReplaceAllString (used by lex.go) does not replace the
    empty match right after a match, so the result is one ``x`` (Python's re.sub gives
    two). The replacement is read with raw escapes, so ``\\$0`` reaches Go's template
    expansion as ``\\`` and ``$0``, the match; ``$$`` is the (unset) special parameter."""
    lex = Lex("\\")
    assert lex.process_word("${V//*/x}", {"V": "abc"}) == "x"
    assert lex.process_word("${V//b/[\\$0]}", {"V": "abc"}) == "a[\\b]c"
    assert lex.process_word("${V//b/[$$0]}", {"V": "abc"}) == "a[0]c"
