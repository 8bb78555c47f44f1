"""Who commands run as, in real busybox boxes: ``run(user=)``, ``spawn(user=)``, the
marker's ``user`` key (and ini ``nsbox_user``), and the image's ``USER`` (config ``User``).

References: moby/sys ``user/user.go`` ``GetExecUser`` (formerly opencontainers/runc
``libcontainer/user``), which Docker resolves ``--user`` and ``USER`` with; opencontainers/runc
``libcontainer/init_linux.go`` ``finalizeNamespace``/``setupUser``/``fixStdioPermissions``
(how the ids are applied) and ``libcontainer/env.go`` ``prepareEnv`` (``HOME``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pytest_nsbox import Box, SpecError

pytestmark = pytest.mark.sandbox(image="busybox")

# Appended to busybox's own files (root, daemon, nobody; root, daemon, tty, nogroup).
PASSWD = ("alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
          "bob:x:1001:1001::/home/bob:/bin/sh\n")
GROUP = ("alice:x:1000:\nbob:x:1001:\nstaff:x:50:alice,bob\nwheel:x:10:root,alice\n"
         "devs:x:4000:bob\n")
IDS = 'id -u; id -g; id -G; echo "$HOME"; sed -n "s/^Groups:[[:space:]]*//p" /proc/self/status'


def add_users(box: Box) -> None:
    box.write_text("/etc/passwd", box.read_text("/etc/passwd") + PASSWD)
    box.write_text("/etc/group", box.read_text("/etc/group") + GROUP)
    box.run("mkdir -p /home/alice /home/bob", check=True)


def ids(box: Box, **run: object) -> dict[str, object]:
    """uid, gid, ``id -G``, HOME and the kernel's supplementary list (/proc/self/status)."""
    result = box.run(IDS, **run)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    uid, gid, all_groups, home, groups = result.stdout.split("\n")[:5]
    return {"uid": int(uid), "gid": int(gid), "id -G": all_groups.split(), "HOME": home,
            "groups": groups.split()}


@pytest.fixture
def box(nsbox: Box) -> Box:
    add_users(nsbox)
    return nsbox


def test_a_numeric_uid_without_entry_gets_gid_0_no_groups_and_home_slash(box: Box) -> None:
    """GetExecUser: a uid no passwd line has keeps the default gid (0: Docker passes no
    defaults) and no supplementary groups; runc prepareEnv/getUserHome: HOME=/."""
    assert ids(box, user="1234") == {"uid": 1234, "gid": 0, "id -G": ["0"], "HOME": "/",
                                     "groups": []}
    assert ids(box, user=4321)["uid"] == 4321  # an int is a uid too


@pytest.mark.parametrize("user", ["alice", "1000"])
def test_a_name_or_a_uid_with_entry_gets_its_gid_home_and_groups(box: Box, user: str) -> None:
    """GetExecUser: the passwd entry's gid and home, plus every /etc/group line that lists
    the entry's user name (staff and wheel list alice; devs does not)."""
    assert ids(box, user=user) == {"uid": 1000, "gid": 1000, "id -G": ["1000", "10", "50"],
                                   "HOME": "/home/alice", "groups": ["10", "50"]}


@pytest.mark.parametrize(("user", "uid", "gid", "home"), [
    ("alice:devs", 1000, 4000, "/home/alice"),
    ("alice:4000", 1000, 4000, "/home/alice"),
    ("alice:777", 1000, 777, "/home/alice"),  # a numeric gid needs no /etc/group line
    ("1000:staff", 1000, 50, "/home/alice"),
    ("bob:staff", 1001, 50, "/home/bob"),
    ("1234:5678", 1234, 5678, "/"),
])
def test_user_colon_group_gets_only_that_group(box: Box, user: str, uid: int, gid: int,
                                               home: str) -> None:
    """GetExecUser: "Supplementary group ids only make sense if in the implicit form" -- an
    explicit group is the gid and the only group."""
    assert ids(box, user=user) == {"uid": uid, "gid": gid, "id -G": [str(gid)], "HOME": home,
                                   "groups": []}


def test_no_user_is_root_with_the_groups_etc_group_gives_root(box: Box) -> None:
    """GetExecUser(""): the passwd entry of uid 0 and the groups listing ``root`` (here
    wheel), as Docker gives a container with no USER (alpine's root: wheel, adm, ...)."""
    assert ids(box) == {"uid": 0, "gid": 0, "id -G": ["0", "10"], "HOME": "/root",
                        "groups": ["10"]}
    assert ids(box, user="root") == ids(box)
    box.run("sed -i /^wheel/d /etc/group", check=True)  # the files are read for each command
    assert ids(box)["groups"] == []


def test_home_comes_from_passwd_unless_the_environment_sets_it(box: Box, nsbox_factory) -> None:
    """runc prepareEnv: a non-empty HOME from the environment stays (run's env, the spec's
    env); an empty one is replaced by the passwd home of the command's uid."""
    elsewhere = box.run('echo "$HOME"', user="alice", env={"HOME": "/elsewhere"})
    assert elsewhere.stdout == "/elsewhere\n"
    assert box.run('echo "$HOME"', user="alice", env={"HOME": ""}).stdout == "/home/alice\n"
    assert box.run('echo "$HOME"', user="nobody").stdout == "/nonexistent\n"
    assert box.run('echo "$HOME"').stdout == "/root\n"
    other = nsbox_factory(image="busybox", env={"HOME": "/from-spec"})
    assert other.run('echo "$HOME"', user="nobody").stdout == "/from-spec\n"
    assert other.run('echo "$HOME"').stdout == "/from-spec\n"


def test_unknown_names_fail_the_command_naming_the_user_and_the_file(box: Box) -> None:
    """GetExecUser: ErrNoPasswdEntries / ErrNoGroupEntries; Docker's exec gives 126 then."""
    ghost = box.run("true", user="ghost")
    assert ghost.returncode == 126
    assert "unable to find user ghost: no matching entries in the box's /etc/passwd" in ghost.stderr
    group = box.run("true", user="alice:ghosts")
    assert group.returncode == 126
    assert ("unable to find group ghosts: no matching entries in the box's /etc/group"
            in group.stderr)
    assert box.run("true", user="12345:54321").returncode == 0  # numbers need no entry


def test_values_that_can_never_resolve_are_spec_errors(box: Box) -> None:
    """moby/sys user parseNumeric: ids beyond 0..2**31-1 are ErrRange; our errors.py gives
    the value and a good example instead of a failed command."""
    with pytest.raises(SpecError, match=r"run\(user='-1'\): uids and gids must be in range "
                                        r"0-2147483647; use e.g. 'nobody'"):
        box.run("true", user="-1")
    with pytest.raises(SpecError, match="more than one ':'"):
        box.run("true", user="a:b:c")
    with pytest.raises(SpecError, match="not a user name or uid"):
        box.run("true", user=True)  # type: ignore[arg-type]


def test_spawn_takes_the_same_user(box: Box) -> None:
    """spawn(user=) goes through the same lookup as run(user=)."""
    result = box.spawn(IDS, user="bob").wait(30)
    assert [line.split() for line in result.stdout.split("\n")[:5]] == [
        ["1001"], ["1001"], ["1001", "50", "4000"], ["/home/bob"], ["50", "4000"]]


def test_the_user_can_reopen_its_own_stdio(box: Box) -> None:
    """runc setupUser/fixStdioPermissions: stdio is chowned to the user first, so a
    non-root command can open /dev/stdout (a pipe created by root, mode 0600)."""
    result = box.run("echo out > /dev/stdout; echo err > /dev/stderr; cat /dev/stdin",
                     user="nobody", input="in")
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\nin", "err\n")


@pytest.mark.sandbox(image="busybox", cap_drop=["DAC_OVERRIDE", "DAC_READ_SEARCH"])
def test_a_cwd_only_the_user_may_enter(nsbox: Box) -> None:
    """runc finalizeNamespace: chdir before the user switch, and on EPERM again after it, so
    a working directory the user owns (mode 700) works even where root may not enter it."""
    add_users(nsbox)
    nsbox.run("mkdir /private && chown alice /private && chmod 700 /private", check=True)
    assert nsbox.run("pwd", cwd="/private", user="alice").stdout == "/private\n"
    denied = nsbox.run("pwd", cwd="/private", user="bob")
    assert denied.returncode == 126 and "Permission denied" in denied.stderr


# -- the marker's user key, ini nsbox_user, the factory ------------------------------------

def test_marker_key_ini_default_and_overrides(pytester: pytest.Pytester) -> None:
    """Docker's precedence: ``exec --user`` over ``run --user`` over the image's USER; here
    run(user=) over the marker/factory key over ini ``nsbox_user`` over the image."""
    pytester.makeini("[pytest]\nnsbox_user = 1234:5678\n")
    pytester.makepyfile("""
        import pytest

        def test_ini_default(nsbox_factory):
            box = nsbox_factory(image="busybox")
            assert box.run("id -u; id -g").stdout.split() == ["1234", "5678"]
            assert box.spec.user == "1234:5678"

        @pytest.mark.sandbox(image="busybox", user="nobody")
        def test_marker(nsbox, nsbox_factory):
            assert nsbox.run("id -u; echo $HOME").stdout.split() == ["65534", "/nonexistent"]
            assert nsbox.spawn("id -u").wait(30).stdout == "65534\\n"
            assert nsbox.run("id -u", user="root").stdout == "0\\n"
            assert nsbox.run("id -u", user=0).stdout == "0\\n"
            assert nsbox.run("id -u", user="").stdout == "65534\\n"  # "" is "not set"
            assert nsbox_factory(user="daemon").run("id -u").stdout == "1\\n"
            assert nsbox_factory(user=7).run("id -u").stdout == "7\\n"

        @pytest.mark.sandbox(image="busybox", user="a:b:c")
        def test_bad(nsbox):
            pass

        @pytest.mark.sandbox(image="busybox", user=-5)
        def test_out_of_range(nsbox):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([
        "*::test_bad: sandbox(user='a:b:c'): more than one ':' (give 'user:group'); "
        "use e.g. 'nobody', '1000' or '1000:1000'",
        "*::test_out_of_range: sandbox(user=-5): uids and gids must be in range 0-2147483647;"
        " use e.g. 'nobody', '1000' or '1000:1000'"])
    result.stdout.no_fnmatch_line("*Traceback*")


# -- the image's USER ------------------------------------------------------------------------

def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _set_config(layout: Path, **config: object) -> None:
    """Change the image config (``config.User``, ``config.Env``) of the layout's only image,
    rewriting the config and manifest blobs and the index as an OCI tool would."""
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_text())
    image_config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    image_config.setdefault("config", {}).update(config)
    manifest["config"].update(_blob(layout, json.dumps(image_config).encode()))
    desc.update(_blob(layout, json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))


@pytest.fixture
def user_image(box: Box, tmp_path: Path) -> str:
    """An OCI layout of busybox with alice and bob whose config says ``User: alice`` and
    sets no HOME, as ``docker save``/skopeo would hand one over."""
    layout = tmp_path / "layout"
    box.commit().save(str(layout), tag="u")
    _set_config(layout, User="alice")
    return f"oci:{layout}:u"


def test_the_images_user_is_the_default_and_can_be_overridden(user_image: str,
                                                               nsbox_factory) -> None:
    """Docker: the image config's User is who the container's processes run as, unless
    ``--user`` says otherwise (OCI image-spec config.User; moby WithUser(c.Config.User))."""
    box = nsbox_factory(image=user_image)
    assert ids(box) == {"uid": 1000, "gid": 1000, "id -G": ["1000", "10", "50"],
                        "HOME": "/home/alice", "groups": ["10", "50"]}
    assert box.spawn("id -un").wait(30).stdout == "alice\n"
    assert ids(box, user="root")["uid"] == 0
    assert ids(box, user="bob:devs")["gid"] == 4000
    assert ids(nsbox_factory(image=user_image, user="nobody"))["uid"] == 65534
    assert ids(nsbox_factory(image=user_image, user="0"))["HOME"] == "/root"


def test_a_numeric_image_user_and_an_image_home(box: Box, tmp_path: Path,
                                                nsbox_factory) -> None:
    """config.User "uid:gid" needs no passwd entry; a HOME in config.Env wins over passwd
    (runc prepareEnv keeps a set HOME)."""
    layout = tmp_path / "layout"
    box.commit().save(str(layout), tag="n")
    _set_config(layout, User="2000:3000", Env=["PATH=/bin:/sbin", "HOME=/srv"])
    numeric = nsbox_factory(image=f"oci:{layout}:n")
    assert ids(numeric) == {"uid": 2000, "gid": 3000, "id -G": ["3000"], "HOME": "/srv",
                            "groups": []}
