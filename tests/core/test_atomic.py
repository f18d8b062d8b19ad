from pathlib import Path

import pytest

from adalora_core.atomic import atomic_directory


def test_a_failed_write_leaves_the_old_directory_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_successful_write_replaces_the_directory_whole(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with atomic_directory(out) as tmp:
        (tmp / "stale.txt").write_text("x")
    with atomic_directory(out) as tmp:
        (tmp / "fresh.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["fresh.txt"]
