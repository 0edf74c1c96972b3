"""The memory benchmark runs end to end on tiny memory-mapped files (measured elsewhere)."""

import json

import pytest

from benchmarks import memory

PHASES = ["fit", "transform", "fit early_stopping"]
MEMORY_FIELDS = ["data_mib", "anon_start_mib", "anon_growth_mib", "vm_hwm_mib", "rss_file_mib"]


@pytest.mark.slow
def test_memory_benchmark_writes_one_row_per_size_and_phase(tmp_path):
    args = ["--sizes", "600", "1200", "--budget", "0.5", "--out", str(tmp_path)]
    args += ["--tmp-dir", str(tmp_path)]
    assert memory.main(args) == 0
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert [(r["n"], r["phase"]) for r in rows] == [(n, p) for n in (600, 1200) for p in PHASES]
    for row in rows:
        for field in MEMORY_FIELDS:
            assert isinstance(row[field], float) and row[field] > 0, (row, field)
        assert row["vm_hwm_mib"] >= row["anon_start_mib"]
    transforms = [r for r in rows if r["phase"] == "transform"]
    assert all(r["img_s"] > 0 and r["output_mib"] == r["n"] * 16 * 4 / 2**20 for r in transforms)
    assert rows[0]["epochs"] >= 1 and rows[0]["batches"] >= 1
    table = (tmp_path / "memory.md").read_text()
    assert "| n | phase | data MiB |" in table and "| 1200 | transform |" in table
    assert "RssAnon" in table and "largest / smallest" in table
    assert not list(tmp_path.glob("dimlearn_memory_*")), "the .npy files are deleted"


def test_status_fields_and_disk_check(tmp_path, monkeypatch):
    status = memory.status_mib("RssAnon", "VmHWM")  # from benchmarks.common
    assert status["VmHWM"] >= status["RssAnon"] > 0
    monkeypatch.setattr(memory.shutil, "disk_usage", lambda path: type("U", (), {"free": 10}))
    with pytest.raises(SystemExit, match="not enough disk"):
        memory.write_images(tmp_path / "x.npy", 1000)
    assert not (tmp_path / "x.npy").exists()
