"""records: the box record (``owner.json``) as a ``BoxRecord``: written and read back, older
shapes still read, a malformed file an error naming it.

Written from crun's ``src/libcrun/status.c`` (``libcrun_read_container_status``: the state
file is parsed in one place, and a file that does not parse is an error naming it) and the
OCI runtime spec's state (runtime.md "State": the fields a runtime records per container).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_nsbox import records
from pytest_nsbox.records import BoxRecord, RecordError
from pytest_nsbox.state import StateDirs


def a_record(**kept: object) -> BoxRecord:
    return records.new_record(box_id="0123456789ab", owner_lock="/run/l/1.lock", pid=4242,
                              name="web", image="busybox", hostname="web", created=1.5e9,
                              env={"PATH": "/bin", "HOSTNAME": "web"}, workdir="/srv",
                              kept=dict(kept) or None)


def test_a_record_round_trips(tmp_path: Path) -> None:
    record = a_record()
    records.write(str(tmp_path), record)
    assert records.read_record(str(tmp_path)) == record
    on_disk = json.loads((tmp_path / records.RECORD).read_text())
    assert "kept" not in on_disk and on_disk["owner_pid"] == os.getpid()


def test_a_kept_entry_round_trips(tmp_path: Path) -> None:
    record = a_record(version=1, label="t", image={"ref": "busybox"})
    records.write(str(tmp_path), record)
    back = records.read_record(str(tmp_path))
    assert back is not None and back.kept == {"version": 1, "label": "t",
                                              "image": {"ref": "busybox"}}


@pytest.mark.parametrize("old", [
    # the first records (before the owner lock): git e8e9a85
    {"id": "0123456789ab", "owner_pid": 10, "owner_start": 99, "name": "b", "image": "busybox",
     "hostname": "b", "created": 1700000000.25},
    # with the owner lock and the cgroup, no pid/env/workdir yet
    {"id": "0123456789ab", "owner_pid": 10, "owner_start": 99, "owner_lock": "/l/10.lock",
     "cgroup": "nsbox-0123456789ab", "name": "b", "image": "busybox"},
    # the last version's: every field, "pid" null when unknown, an int "created"
    {"id": "0123456789ab", "owner_pid": 10, "owner_start": 99, "owner_lock": "/l/10.lock",
     "pid": None, "cgroup": "nsbox-0123456789ab", "name": "b", "image": "busybox",
     "hostname": "b", "created": 1700000000, "env": {"PATH": "/bin"}, "workdir": "/"},
])
def test_records_of_older_versions_still_read(tmp_path: Path, old: dict[str, object]) -> None:
    (tmp_path / records.RECORD).write_text(json.dumps(old))
    record = records.read_record(str(tmp_path))
    assert record is not None and (record.id, record.owner_pid) == ("0123456789ab", 10)
    info = records.BoxInfo(record.id, str(tmp_path), record, "dead", 0.0)
    assert info.cgroup == "nsbox-0123456789ab" and info.workdir == "/"


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "unreadable"),
    ("[1]", "expected an object"),
    ('{"owner_pid": 1, "owner_start": 2}', "missing field 'id'"),
    ('{"id": "a", "owner_pid": 1, "owner_start": 2, "colour": "red"}',
     "unknown field 'colour'"),
    ('{"id": "a", "owner_pid": "1", "owner_start": 2}', "owner_pid: expected int, got '1'"),
    ('{"id": "a", "owner_pid": 1, "owner_start": 2, "env": {"A": 3}}',
     r"env\['A'\]: expected str, got 3"),
])
def test_a_malformed_record_is_an_error_naming_the_file(tmp_path: Path, text: str,
                                                        match: str) -> None:
    (tmp_path / records.RECORD).write_text(text)
    with pytest.raises(RecordError, match=match) as info:
        records.read_record(str(tmp_path))
    assert str(tmp_path / records.RECORD) in str(info.value)


def test_no_record_yet_is_none(tmp_path: Path) -> None:
    assert records.read_record(str(tmp_path)) is None


def test_scan_lists_a_box_with_a_bad_record_as_unreadable(tmp_path: Path) -> None:
    dirs = StateDirs(store=str(tmp_path / "store"), run=str(tmp_path / "run"))
    box = Path(dirs.boxes) / "0123456789ab"
    box.mkdir(parents=True)
    (box / records.RECORD).write_text('{"id": 1, "owner_pid": 1, "owner_start": 2}')
    (found,) = records.scan_boxes(dirs)
    # young, as a box whose record is not written yet; gc removes it once old (abandoned)
    assert (found.id, found.record, found.state) == ("0123456789ab", None, "starting")
    assert "id: expected str, got 1" in found.problem
