"""``ci/bench --quick`` runs, writes its table and chart, and leaves nothing behind.

No timing is asserted: the machine running the suite may be busy, and what the numbers
say is the bench's report (issue 6), not a pass/fail of the suite. This test keeps the
bench from rotting as the runtime changes under it.
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIMES = ("nsbox", "crun", "runc", "bwrap", "unshare")
FIGURES = ("lifecycle: nsbox / crun", "`run(['true'])` in a live box",
           "overhead per sandboxed test", "warm pool", "`pytest -n 2` throughput",
           "start time, ", "PSS per idle box", "`network='private'` box lifecycle",
           "Containerfile rebuild", "session with no boxes")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ci/bench needs root")


def _leftovers(tag: str) -> list[str]:
    found = [p for p in (f"/dev/shm/{tag}", f"/run/{tag}", f"/var/tmp/{tag}")
             if os.path.lexists(p)]
    for top, dirs, _files in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if d == tag or d.startswith(tag + "-")]
        if top.count("/") >= 4:
            dirs[:] = []
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_bench_writes_table_and_chart(tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(tmp_path, "bench-results")
    proc = subprocess.run([os.path.join(REPO, "ci", "bench"), "--quick", "--out", out],
                          cwd=REPO, capture_output=True, text=True, timeout=580, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"

    with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        table = f.read()
    assert table.strip() in proc.stdout, "the table is printed too"
    rows = re.findall(r"^\| (\w+)[ |]", table.split("## Figures")[0], re.MULTILINE)
    assert [r for r in rows if r in RUNTIMES] == list(RUNTIMES)
    nsbox_row = next(line for line in table.splitlines() if line.startswith("| nsbox |"))
    assert re.match(r"\| nsbox \| [\d.]+ \| [\d.]+ \|", nsbox_row), nsbox_row
    for figure in FIGURES:
        assert f"| {figure}" in table, f"figure {figure!r} missing from the table"
    assert "failed:" not in table
    assert "## Where nsbox's lifecycle time goes" in table

    with open(os.path.join(out, "chart.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    tag = re.search(r"workspace (nsbox-bench-\d+)", proc.stderr)
    assert tag, proc.stderr[-2000:]
    assert _leftovers(tag.group(1)) == []
