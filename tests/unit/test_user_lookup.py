"""model/users.py: runc's user lookup (moby/sys user.GetExecUser) over passwd/group text.

The tables are those of moby/sys ``user/user_test.go`` (formerly opencontainers/runc
``libcontainer/user/user_test.go``): ``TestParseLine``, ``TestParsePasswdFilter``,
``TestParseGroupFilter``, ``TestGetExecUser``, ``TestGetExecUserInvalid`` and
``TestGetExecUserNilSources``, rewritten for our API; then the four rules issue 9 names.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_nsbox.model import users
from pytest_nsbox.model.users import ExecUser, UserError, exec_user


def large_group() -> str:
    """user_test.go ``largeGroup()``: one group of gid 1000 listing user1..user7500."""
    return "largegroup:x:1000:" + ",".join(f"user{i}" for i in range(1, 7501))


# -- the file parsers ---------------------------------------------------------------------

def test_parse_passwd_reads_every_non_blank_line_and_garbage_gets_uid_0() -> None:
    """user_test.go TestParsePasswdFilter: three entries, the garbage line among them with
    its number fields as Atoi-with-errors-ignored leaves them (0)."""
    entries = users.parse_passwd("\nroot:x:0:0:root:/root:/bin/bash\n"
                                 "adm:x:3:4:adm:/var/adm:/bin/false\n"
                                 "this is just some garbage data\n")
    assert [(e.name, e.uid, e.gid, e.home) for e in entries] == [
        ("root", 0, 0, "/root"), ("adm", 3, 4, "/var/adm"),
        ("this is just some garbage data", 0, 0, "")]


def test_parse_group_reads_members_and_skips_comments() -> None:
    """user_test.go TestParseGroupFilter (4 groups with the large one), plus the glibc rule
    moby/sys ParseGroupFilter follows: lines starting with '#' (after blanks) are comments."""
    groups = users.parse_group("\nroot:x:0:root\nadm:x:4:root,adm,daemon\n"
                               "this is just some garbage data\n  # a comment:x:9:root\n"
                               + large_group())
    assert len(groups) == 4
    assert (groups[0].name, groups[0].gid, groups[0].members) == ("root", 0, ("root",))
    assert (groups[1].name, groups[1].gid, groups[1].members) == ("adm", 4,
                                                                  ("root", "adm", "daemon"))
    assert groups[2].gid == 0 and groups[2].members == ()
    assert groups[3].gid == 1000 and len(groups[3].members) == 7500


@pytest.mark.parametrize(("field", "value"), [
    ("12", 12), ("+12", 12), ("-12", -12), ("007", 7), ("not a number", 0), ("", 0),
    ("1_000", 0), ("0x10", 0), ("١٢", 0),  # Go's Atoi takes ASCII digits only
    ("9223372036854775808", (1 << 63) - 1),  # out of range: Atoi's clamped value
])
def test_number_fields_are_read_as_gos_atoi_with_errors_ignored(field: str, value: int) -> None:
    """user_test.go TestParseLine (``not a number`` -> 0, ``b:12:c`` -> 12): runc's parseLine
    reads numbers with strconv.Atoi and ignores its error, keeping what Atoi returned."""
    assert users.parse_passwd(f"u:x:{field}:{field}:g:/h:/bin/sh")[0].uid == value


def test_missing_fields_are_empty_and_extra_fields_ignored() -> None:
    """user_test.go TestParseLine (``::::::::::``, ``a``): fewer fields leave the rest
    empty, more are ignored."""
    assert users.parse_passwd("a") == [users.Passwd("a", 0, 0, "")]
    assert users.parse_passwd("odd:x:111:112::/home/odd:::::") == [
        users.Passwd("odd", 111, 112, "/home/odd")]
    assert users.parse_group("g:x:5") == [users.Group("g", 5, ())]


# -- GetExecUser: user_test.go's tables ----------------------------------------------------

PASSWD = """
root:x:0:0:root user:/root:/bin/bash
adm:x:42:43:adm:/var/adm:/bin/false
111:x:222:333::/var/garbage
odd:x:111:112::/home/odd:::::
2147483647:x:0:0:maxint32:/root:/bin/bash
2147483648:x:0:0:toolarge:/root:/bin/bash
9223372036854775807:x:0:0:maxint64:/root:/bin/bash
user7456:x:7456:100:Vasya:/home/user7456
this is just some garbage data
"""
GROUP = """
root:x:0:root
adm:x:43:
grp:x:1234:root,adm,user7456
444:x:555:111
odd:x:444:
2147483647:x:1235:
2147483648:x:1236:
9223372036854775807:x:1237:
this is just some garbage data
""" + large_group()

DEFAULT = ExecUser(uid=8888, gid=8888, groups=(8888,), home="/8888")


@pytest.mark.parametrize(("spec", "expected"), [
    ("root", ExecUser(0, 0, (0, 1234), "/root")),
    ("adm", ExecUser(42, 43, (1234,), "/var/adm")),
    ("root:adm", ExecUser(0, 43, DEFAULT.groups, "/root")),
    ("adm:1234", ExecUser(42, 1234, DEFAULT.groups, "/var/adm")),
    ("42:1234", ExecUser(42, 1234, DEFAULT.groups, "/var/adm")),
    ("1337:1234", ExecUser(1337, 1234, DEFAULT.groups, DEFAULT.home)),
    ("1337", ExecUser(1337, DEFAULT.gid, DEFAULT.groups, DEFAULT.home)),
    ("", ExecUser(DEFAULT.uid, DEFAULT.gid, DEFAULT.groups, DEFAULT.home)),
    # runc #695: a number is a uid, never the name of a user called "111".
    ("111", ExecUser(111, 112, DEFAULT.groups, "/home/odd")),
    ("111:444", ExecUser(111, 444, DEFAULT.groups, "/home/odd")),
    # runc #3036: a numeric uid with an entry gets the entry's user's groups.
    ("7456", ExecUser(7456, 100, (1234, 1000), "/home/user7456")),
    ("7456:2147483647", ExecUser(7456, 2147483647, DEFAULT.groups, "/home/user7456")),
    ("2147483647:43", ExecUser(2147483647, 43, DEFAULT.groups, DEFAULT.home)),
    ("2147483647", ExecUser(2147483647, DEFAULT.gid, DEFAULT.groups, DEFAULT.home)),
])
def test_get_exec_user_table(spec: str, expected: ExecUser) -> None:
    """moby/sys user/user_test.go TestGetExecUser, case by case, with its defaults."""
    assert exec_user(spec, PASSWD, GROUP, DEFAULT) == expected


INVALID_PASSWD = """
root:x:0:0:root user:/root:/bin/bash
adm:x:42:43:adm:/var/adm:/bin/false
-42:x:12:13:broken:/very/broken
2147483647:x:0:0:maxint32:/root:/bin/bash
2147483648:x:0:0:toolarge:/root:/bin/bash
9223372036854775807:x:0:0:maxint64:/root:/bin/bash
9223372036854775808:x:0:0:maxint64plusone:/root:/bin/bash
this is just some garbage data
"""
INVALID_GROUP = """
root:x:0:root
adm:x:43:
grp:x:1234:root,adm
2147483647:x:1235:
2147483648:x:1236:
9223372036854775807:x:1237:
9223372036854775808:x:1238:
this is just some garbage data
"""


@pytest.mark.parametrize("spec", [
    # no such user or group
    "notuser", "notuser:notgroup", "root:notgroup", "notuser:adm", "8888:notgroup",
    "notuser:8888",
    # ids out of range: negative, past 2**31-1, past int64 (never read as a name)
    "-1:0", "0:-3", "-5:-2", "-42", "-43", "42:2147483648", "2147483648:43", "2147483648",
    "7456:9223372036854775807", "9223372036854775807:43", "9223372036854775807",
    "9223372036854775808", "0:9223372036854775808",
])
def test_get_exec_user_invalid_table(spec: str) -> None:
    """moby/sys user/user_test.go TestGetExecUserInvalid: every one is an error, even where
    a passwd or group entry carries the out-of-range text as its name."""
    with pytest.raises(UserError):
        exec_user(spec, INVALID_PASSWD, INVALID_GROUP)


NIL_PASSWD = "\nroot:x:0:0:root user:/root:/bin/bash\nadm:x:42:43:adm:/var/adm:/bin/false\n"


@pytest.mark.parametrize(("spec", "passwd", "expected"), [
    ("", None, ExecUser(8888, 8888, (8888,), "/8888")),
    ("root", NIL_PASSWD, ExecUser(0, 0, (8888,), "/root")),
    ("0", None, ExecUser(0, 8888, (8888,), "/8888")),
    ("0:0", None, ExecUser(0, 0, (8888,), "/8888")),
])
def test_get_exec_user_without_files(spec: str, passwd: str | None,
                                     expected: ExecUser) -> None:
    """moby/sys user/user_test.go TestGetExecUserNilSources: a missing file (None, what
    GetExecUserPath passes for a file it cannot open) makes only numbers resolve."""
    assert exec_user(spec, passwd, None, DEFAULT) == expected


# -- the four rules of issue 9, with Docker's defaults (none: uid 0, gid 0, no groups) ------

BOX_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
              "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
              "bob:x:1001:1001::/home/bob:/bin/sh\n")
BOX_GROUP = ("root:x:0:\nalice:x:1000:\nbob:x:1001:\n"
             "staff:x:50:alice,bob\nwheel:x:10:root,alice\ndevs:x:4000:bob\n")


def test_a_numeric_uid_without_entry_gets_gid_0_no_groups_and_home_slash() -> None:
    """GetExecUser: ``user.Gid`` keeps the default (0, Docker passes no defaults) and Sgids
    stay empty; runc prepareEnv/getUserHome: no entry gives HOME=/."""
    who = exec_user("1234", BOX_PASSWD, BOX_GROUP)
    assert who == ExecUser(1234, 0, (), "")
    assert users.with_home({}, who.uid, BOX_PASSWD) == {"HOME": "/"}


@pytest.mark.parametrize("spec", ["alice", "1000"])
def test_a_name_or_a_uid_with_entry_gets_its_gid_home_and_member_groups(spec: str) -> None:
    """GetExecUser: the entry's gid and home; Sgids are the groups listing the entry's name,
    in file order (the user's own group is not added unless it lists the user)."""
    who = exec_user(spec, BOX_PASSWD, BOX_GROUP)
    assert who == ExecUser(1000, 1000, (50, 10), "/home/alice")
    assert users.with_home({}, who.uid, BOX_PASSWD) == {"HOME": "/home/alice"}


@pytest.mark.parametrize(("spec", "expected"), [
    ("alice:devs", ExecUser(1000, 4000, (), "/home/alice")),
    ("alice:4000", ExecUser(1000, 4000, (), "/home/alice")),
    ("alice:777", ExecUser(1000, 777, (), "/home/alice")),  # no entry needed for a number
    ("1234:5678", ExecUser(1234, 5678, (), "")),
    ("1234:staff", ExecUser(1234, 50, (), "")),
    (":staff", ExecUser(0, 50, (), "/root")),  # no user: the default uid, root's entry
])
def test_user_colon_group_gets_only_that_group(spec: str, expected: ExecUser) -> None:
    """GetExecUser: "Supplementary group ids only make sense if in the implicit form" -- an
    explicit group sets the gid and leaves Sgids at the defaults (none)."""
    assert exec_user(spec, BOX_PASSWD, BOX_GROUP) == expected


def test_the_empty_user_is_root_with_roots_groups() -> None:
    """GetExecUser(""): the entry whose uid is the default uid (0) and its member groups, as
    Docker gives a container without USER (alpine's root is in wheel, adm, ...)."""
    assert exec_user("", BOX_PASSWD, BOX_GROUP) == ExecUser(0, 0, (10,), "/root")
    assert exec_user("", None, None) == ExecUser(0, 0, (), "")


def test_first_match_wins_for_users_and_groups() -> None:
    """GetExecUser: "First match wins, even if there's more than one matching entry"."""
    passwd = "toor:x:0:5::/toor:\nroot:x:0:0::/root:\nroot:x:7:7::/seven:\n"
    group = "g:x:20:\ng:x:21:\n"
    assert exec_user("0", passwd, group) == ExecUser(0, 5, (), "/toor")
    assert exec_user("root", passwd, group) == ExecUser(0, 0, (), "/root")
    assert exec_user("root:g", passwd, group).gid == 20


def test_unknown_names_are_errors_naming_the_user_and_the_file() -> None:
    """GetExecUser: ErrNoPasswdEntries / ErrNoGroupEntries for names, never for numbers."""
    with pytest.raises(UserError, match="unable to find user ghost: .*the box's /etc/passwd"):
        exec_user("ghost", BOX_PASSWD, BOX_GROUP)
    with pytest.raises(UserError, match="unable to find group ghosts: .*the box's /etc/group"):
        exec_user("alice:ghosts", BOX_PASSWD, BOX_GROUP)
    with pytest.raises(UserError, match="ghost: .*it has no /etc/passwd"):
        exec_user("ghost", None, None)
    with pytest.raises(UserError, match="ghosts: .*it has no /etc/group"):
        exec_user("0:ghosts", None, None)
    assert exec_user("5:6", None, None) == ExecUser(5, 6, (), "")


# -- HOME: runc's prepareEnv ----------------------------------------------------------------

@pytest.mark.parametrize(("env", "uid", "home"), [
    ({}, 1000, "/home/alice"),
    ({"HOME": ""}, 1000, "/home/alice"),  # an empty HOME counts as unset
    ({"HOME": "/custom"}, 1000, "/custom"),
    ({}, 0, "/root"),
    ({}, 4242, "/"),
])
def test_home_comes_from_passwd_unless_the_environment_sets_it(env: dict[str, str], uid: int,
                                                               home: str) -> None:
    """opencontainers/runc libcontainer/env.go prepareEnv + getUserHome: a non-empty HOME
    stays; else the first passwd entry with the uid gives it; else "/"."""
    assert users.with_home({"A": "1", **env}, uid, BOX_PASSWD) == {"A": "1", "HOME": home}
    assert users.with_home({}, 0, None) == {"HOME": "/"}


# -- reading the files ---------------------------------------------------------------------

def test_read_file_takes_regular_files_only_and_caps_the_size(tmp_path: Path) -> None:
    """moby/sys user/user_utils.go openUserFile: a non-regular file is as if absent (a FIFO
    must not block the box's init), and more than 10 MiB is an error (TestParseGroupFileCapsReads
    and TestTestParseGroupFileCapsReadsonRegularFile)."""
    plain = tmp_path / "group"
    plain.write_bytes(b"g:x:5:\xff\n")
    assert users.read_file(str(plain)) == "g:x:5:\udcff\n"
    assert users.read_file(str(tmp_path / "missing")) is None
    assert users.read_file(str(tmp_path)) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert users.read_file(str(fifo)) is None
    at_cap = tmp_path / "at-cap"
    at_cap.write_bytes(b"#" * (users.MAX_FILE_BYTES - 1) + b"\n")
    assert len(users.read_file(str(at_cap)) or "") == users.MAX_FILE_BYTES
    big = tmp_path / "big"
    big.write_bytes(b"#" * users.MAX_FILE_BYTES + b"\n")
    with pytest.raises(UserError, match="larger than 10 MiB"):
        users.read_file(str(big))


# -- the value the marker, Box and run() take -----------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("nobody", "nobody"), (1000, "1000"), (0, "0"),
    ("1000:1000", "1000:1000"), ("alice:staff", "alice:staff"), ("+5", "+5"),
    (":staff", ":staff"), ("2147483647", "2147483647"),
])
def test_check_accepts_what_can_resolve(value: object, expected: str | None) -> None:
    """Every form GetExecUser's doc comment lists ("", user, uid, user:group, uid:gid,
    user:gid, uid:group); ints are uids; "" and None leave the image's USER in charge."""
    assert users.check(value) == expected


@pytest.mark.parametrize(("value", "problem"), [
    (True, "not a user name or uid but a bool"),
    (1.5, "not a user name or uid but a float"),
    (["alice"], "not a user name or uid but a list"),
    (-1, "uids and gids must be in range 0-2147483647"),
    ("2147483648", "uids and gids must be in range 0-2147483647"),
    ("alice:-3", "uids and gids must be in range 0-2147483647"),
    ("a:b:c", "more than one ':'"),
    ("al\0ice", "NUL"),
    ("al\nice", "newline"),
])
def test_check_refuses_what_can_never_resolve(value: object, problem: str) -> None:
    """moby/sys user parseNumeric's ErrRange, and what no passwd/group line can hold."""
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        users.check(value)


# -- the spec key ----------------------------------------------------------------------------

def test_the_spec_key_is_checked_when_the_spec_is_made() -> None:
    """Our errors.py rule (a bad value names the source, key and value with a good example),
    for what moby/sys user would refuse only when the command starts."""
    from pytest_nsbox.model.spec import BoxSpec

    assert BoxSpec.from_kwargs({"user": 1000}).user == "1000"
    assert BoxSpec.from_kwargs({"user": ""}).user is None
    assert BoxSpec.from_kwargs({}, defaults={"user": "nobody"}).user == "nobody"
    assert BoxSpec.from_kwargs({"user": "0"}, defaults={"user": "nobody"}).user == "0"
    with pytest.raises(ValueError) as info:
        BoxSpec.from_kwargs({"user": "a:b:c"})
    assert str(info.value) == ("sandbox(user='a:b:c'): more than one ':' (give 'user:group');"
                               " use e.g. 'nobody', '1000' or '1000:1000'")
    with pytest.raises(ValueError) as info:
        BoxSpec.from_kwargs({}, defaults={"user": "99999999999"})
    assert str(info.value) == ("ini(nsbox_user='99999999999'): uids and gids must be in range"
                               " 0-2147483647; use e.g. 'nobody', '1000' or '1000:1000'")
