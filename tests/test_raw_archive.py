"""Committed run folders keep their logs/ and serving/ in raw.tar.xz: packing, unpacking, the runner's own
unpacking before --table-only and before a run, and the repository's packed folders being consistent."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from runner import raw_archive

REPO = Path(__file__).resolve().parents[1]


def run_folder(root: Path) -> Path:
    folder = root / "run"
    (folder / "cells").mkdir(parents=True)
    (folder / "cells" / "a.json").write_text("{}")
    (folder / "logs").mkdir()
    (folder / "logs" / "a.log").write_text("engine log\n" * 1000)
    (folder / "serving" / "serve-a" / "c1").mkdir(parents=True)
    (folder / "serving" / "serve-a" / "c1" / "profile_export.jsonl").write_text('{"x": 1}\n')
    return folder


def test_pack_then_unpack_gives_the_same_files_and_git_ignores_the_unpacked_copies(tmp_path):
    folder = run_folder(tmp_path)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert raw_archive.pack(folder) == ["logs", "serving"]
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "cells", "raw.tar.xz"]
    with tarfile.open(folder / "raw.tar.xz") as archive:
        assert {m.uname for m in archive.getmembers()} == {""}  # no packer's user name in it
    assert raw_archive.unpack(folder) == ["logs", "serving"]
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.name not in ("raw.tar.xz", ".gitignore")} == before
    assert raw_archive.unpack(folder) == []  # nothing missing: nothing done

    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    listed = subprocess.run(
        ["git", "-C", str(folder), "ls-files", "--others", "--exclude-standard"], capture_output=True, text=True
    )
    assert listed.stdout.split() == [".gitignore", "cells/a.json", "raw.tar.xz"]


def test_a_slice_copied_into_an_unpacked_folder_is_packed_with_it_and_packing_never_drops_a_file(tmp_path):
    folder = run_folder(tmp_path)
    raw_archive.pack(folder)
    raw_archive.unpack(folder)
    (folder / "serving" / "serve-b" / "c4").mkdir(parents=True)  # a slice run elsewhere, merged by copying
    (folder / "serving" / "serve-b" / "c4" / "profile_export.jsonl").write_text('{"y": 2}\n')
    assert raw_archive.pack(folder) == ["logs", "serving"]
    assert not (folder / "serving").exists()
    with tarfile.open(folder / "raw.tar.xz") as archive:
        files = sorted(m.name for m in archive.getmembers() if m.isfile())
    assert files == ["logs/a.log", "serving/serve-a/c1/profile_export.jsonl", "serving/serve-b/c4/profile_export.jsonl"]

    raw_archive.unpack(folder)
    (folder / "logs" / "a.log").unlink()
    with pytest.raises(ValueError, match=r"1 of its files are not unpacked beside it \(first: logs/a.log\)"):
        raw_archive.pack(folder)
    assert (folder / "serving").is_dir()  # nothing moved
    with tarfile.open(folder / "raw.tar.xz") as archive:
        assert len([m for m in archive.getmembers() if m.isfile()]) == 3


def test_unpack_for_a_path_inside_a_packed_folder_and_a_run_into_it_leaves_a_plain_folder(tmp_path):
    folder = run_folder(tmp_path)
    raw_archive.pack(folder)
    level = folder / "serving" / "serve-a" / "c1"
    assert raw_archive.unpack_for(level) == level and (level / "profile_export.jsonl").is_file()
    assert raw_archive.unpack(folder, keep_archive=False) == []  # already there; the archive goes all the same
    assert not (folder / "raw.tar.xz").exists() and not (folder / ".gitignore").exists()


def test_the_command_line_names_what_it_did_and_a_missing_folder(tmp_path):
    folder = run_folder(tmp_path)
    packed = subprocess.run(
        ["python", "-m", "runner.raw_archive", "pack", str(folder)], cwd=REPO, capture_output=True, text=True
    )
    assert packed.returncode == 0 and packed.stdout == f"{folder}: packed logs/, serving/\n"
    again = subprocess.run(
        ["python", "-m", "runner.raw_archive", "pack", str(folder)], cwd=REPO, capture_output=True, text=True
    )
    assert again.returncode == 1 and "already packed (raw.tar.xz), and 2 of its files are not unpacked" in again.stderr
    assert f"unpack it first (python -m runner.raw_archive unpack {folder})" in again.stderr
    missing = subprocess.run(
        ["python", "-m", "runner.raw_archive", "unpack", str(tmp_path / "nope")], cwd=REPO, capture_output=True,
        text=True,
    )  # fmt: skip
    assert missing.returncode == 1 and missing.stderr == f"error: {tmp_path / 'nope'}: no such run folder\n"


def test_every_committed_archive_holds_what_its_gitignore_names_and_git_tracks_none_of_it():
    archives = sorted(REPO.glob("results/**/raw.tar.xz"))
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    packed_runs = [a.parent for a in archives if (a.parent / ".gitignore").is_file()]
    assert len(packed_runs) >= 10
    for folder in packed_runs:
        with tarfile.open(folder / "raw.tar.xz") as archive:
            names = sorted({m.name.split("/", 1)[0] for m in archive.getmembers()})
        assert names and set(names) <= set(raw_archive.PACKED), folder
        ignored = (folder / ".gitignore").read_text().splitlines()[1:]
        assert ignored == [f"/{name}/" for name in names], folder
        inside = folder.relative_to(REPO).as_posix()
        assert not [p for p in tracked if any(p.startswith(f"{inside}/{name}/") for name in names)], folder
