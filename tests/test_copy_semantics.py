"""COPY and ADD in real builds, checked from inside a box: what Docker (BuildKit) gives.

Each test builds small Containerfiles in a store of its own (``Fresh`` from
test_images.py) and looks at the result with busybox tools in a box. The unit tests of
the same rules, on plain directories, are tests/unit/test_copy.py (ADD's archive rules
too; tests/test_containerfile_build.py builds an ADD of an archive and of a URL).

References: the Dockerfile reference (moby/buildkit frontend/dockerfile/docs/reference.md,
sections COPY and ADD); BuildKit frontend/dockerfile/dockerfile2llb/convert_copy.go
``dispatchCopy`` and solver/llbsolver/file/backend.go ``docopy``; tonistiigi/fsutil
copy/copy.go; moby/go-archive archive.go ``Unpack``; moby/moby#47367.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_nsbox.errors import ImageError
from test_images import Fresh, _can_run, built

pytestmark = pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}")

# Debian 12's layout: /bin is a symlink to usr/bin. Made from busybox by moving its /bin.
USRMERGE = ("FROM busybox\n"
            "RUN cp -a /bin/. /usr/bin/ && /usr/bin/busybox rm -rf /bin "
            "&& /usr/bin/busybox ln -s usr/bin /bin\n")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Fresh]:
    f = Fresh(tmp_path)
    yield f
    f.close()


def sh(fresh: Fresh, image: str, script: str) -> str:
    with fresh.box(image) as box:
        return box.run(script, check=True).stdout


def test_copy_rootfs_onto_an_image_whose_bin_links_to_usr_bin(fresh: Fresh) -> None:
    """Issue 9's failing input: ``COPY rootfs /`` onto an image whose /bin is a symlink to
    usr/bin. /bin stays the symlink, the new file lands in /usr/bin, and /bin/sh (and every
    applet) still runs: what moby/moby#47367 expects of Docker, where BuildKit stops with
    "cannot copy to non-directory"."""
    fresh.image_dir("usrmerge", USRMERGE)
    folder = fresh.image_dir("app", "FROM usrmerge\nCOPY rootfs /\n",
                             **{"rootfs/bin/hello.sh": "#!/bin/sh\necho hello from bin\n",
                                "rootfs/etc/app.conf": "mode=test\n"})
    os.chmod(folder / "rootfs/bin/hello.sh", 0o755)
    out = sh(fresh, "app", "readlink /bin; /bin/sh -c 'echo sh works'; /bin/hello.sh; "
                           "ls /usr/bin/hello.sh; cat /etc/app.conf; ls /bin | wc -l")
    lines = out.splitlines()
    assert lines[:5] == ["usr/bin", "sh works", "hello from bin", "/usr/bin/hello.sh",
                         "mode=test"]
    assert int(lines[5]) > 100  # the applets are all still there


def test_a_source_symlink_is_copied_under_its_own_name(fresh: Fresh) -> None:
    """Issue 9's failing input: ``B/foo.txt -> ../A/bar.txt`` then ``COPY B/foo.txt
    /into/`` gives /into/foo.txt, a file with bar.txt's content (dispatchCopy copies with
    ``FollowSymlinks``; fsutil names the copy ``filepath.Base(src)``). Inside a copied
    folder a symlink stays a symlink."""
    folder = fresh.image_dir("app", "FROM busybox\nCOPY B/foo.txt /into/\nCOPY B /whole/\n",
                             **{"A/bar.txt": "bar content\n"})
    (folder / "B").mkdir()
    os.symlink("../A/bar.txt", folder / "B/foo.txt")
    out = sh(fresh, "app", "ls /into; cat /into/foo.txt; test -L /into/foo.txt || echo file; "
                           "readlink /whole/foo.txt")
    assert out.splitlines() == ["foo.txt", "bar content", "file", "../A/bar.txt"]


def test_destination_symlinks_resolve_inside_the_image(fresh: Fresh) -> None:
    """The destination is resolved as ``fs.RootPath`` does (fsutil copy.go ``Copy``): an
    absolute link target starts at the image's root, a chain of links is followed, and
    ``..`` stops at the root, so nothing is written outside the image."""
    marker = f"nsbox-copy-{uuid.uuid4().hex[:8]}"
    fresh.image_dir("links", "FROM busybox\n"
                             "RUN mkdir -p /srv/app /opt && ln -s /srv/app /opt/app "
                             "&& ln -s opt/app /first "
                             f"&& ln -s ../../../../../../../tmp/{marker} /opt/up\n")
    fresh.image_dir("app", "FROM links\nCOPY f.txt /opt/app/\nCOPY f.txt /first/chained\n"
                           "COPY f.txt /opt/up/\n", **{"f.txt": "payload\n"})
    out = sh(fresh, "app", f"ls /srv/app; cat /tmp/{marker}/f.txt; readlink /opt/app")
    assert out.splitlines() == ["chained", "f.txt", "payload", "/srv/app"]
    assert not os.path.exists(f"/tmp/{marker}")


def test_wildcards_folders_and_the_trailing_slash_rule(fresh: Fresh) -> None:
    """Dockerfile reference, COPY: wildcards as Go's filepath.Match (dot files match
    ``*``), a folder source copies its contents, a relative destination starts at WORKDIR,
    and several files need a destination ending in ``/``; the error names the line."""
    fresh.image_dir("app", "FROM busybox\nWORKDIR /w\nCOPY *.txt t/\nCOPY dir d\n"
                           "COPY one.txt named\n",
                    **{"one.txt": "1", ".dot.txt": "2", "skip.md": "3", "dir/in/x": "x"})
    out = sh(fresh, "app", "ls -A /w/t; ls /w/d; ls /w/d/in; cat /w/named")
    assert out.splitlines() == [".dot.txt", "one.txt", "in", "x", "1"]
    fresh.image_dir("bad", "FROM busybox\nCOPY one.txt two.txt /x\n",
                    **{"one.txt": "1", "two.txt": "2"})
    with pytest.raises(ImageError, match=r"bad/Containerfile:2: COPY: more than one source "
                                         r"\(one\.txt, two\.txt\) needs a destination folder "
                                         r"ending in '/'"):
        fresh.store.build("bad")


def test_chown_and_symbolic_chmod(fresh: Fresh) -> None:
    """Dockerfile reference, COPY --chown (names from the image's /etc/passwd) and
    --chmod in symbolic form: ``u=rwX,go=rX`` gives folders 755 and files 644, keeping the
    execute bit of files that have it."""
    folder = fresh.image_dir("app", "FROM busybox\n"
                                    "COPY --chown=daemon --chmod=u=rwX,go=rX tree /tree\n",
                             **{"tree/plain.txt": "p", "tree/sub/tool": "#!/bin/sh\n"})
    os.chmod(folder / "tree/plain.txt", 0o600)
    os.chmod(folder / "tree/sub/tool", 0o700)
    os.chmod(folder / "tree/sub", 0o700)
    out = sh(fresh, "app", "cd /tree && stat -c '%a %u:%g %n' plain.txt sub sub/tool")
    assert out.splitlines() == ["644 1:1 plain.txt", "755 1:1 sub", "755 1:1 sub/tool"]


def test_copy_from_a_stage_reads_its_merged_layers(fresh: Fresh) -> None:
    """COPY --from reads the stage's root as its layers merge (a file a later RUN removed
    is gone) and keeps the owners found there."""
    fresh.image_dir("app", "FROM busybox AS build\n"
                           "RUN mkdir /out && echo a > /out/a && echo b > /out/b "
                           "&& chown 1:1 /out/a\n"
                           "RUN rm /out/b\n"
                           "FROM busybox\nCOPY --from=build /out /res\n")
    out = sh(fresh, "app", "ls /res; stat -c '%u:%g' /res/a")
    assert out.splitlines() == ["a", "1:1"]


def test_dockerignore_keeps_files_out_of_the_copy_and_the_cache_key(fresh: Fresh) -> None:
    """BuildKit sends the build context without what .dockerignore names, so a changed
    ignored file neither appears in the image nor rebuilds the step."""
    folder = fresh.image_dir("app", "FROM busybox\nCOPY . /app/\n",
                             **{"main.py": "print()\n", "debug.log": "one\n",
                                ".dockerignore": "*.log\n"})
    assert sh(fresh, "app", "ls -A /app").split() == [".dockerignore", "Containerfile",
                                                       "main.py"]
    fresh.lines.clear()
    (folder / "debug.log").write_text("two\n")
    fresh.store.build("app")
    assert built(fresh.lines) == []
    (folder / "main.py").write_text("print(2)\n")
    fresh.store.build("app")
    assert len(built(fresh.lines)) == 1
