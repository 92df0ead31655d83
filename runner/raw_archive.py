"""A finished run folder's raw files (its ``logs/`` and ``serving/``) packed into ``raw.tar.xz``.

Committed results keep their tables, cell results and charts as files and their bulk (engine and
server logs, every load generator export) in one xz archive beside them: about a third of the size,
and so a third of what every call to a lent GPU machine carries. A ``.gitignore`` beside the
archive keeps the unpacked copies out of the repository (and off those machines).

    python -m runner.raw_archive pack FOLDER ...     # pack a finished run folder's raw files
    python -m runner.raw_archive unpack FOLDER ...   # put them back (tables, analysis scripts)

``python -m runner --table-only`` unpacks by itself; a run that writes into a packed folder unpacks
it and removes the archive, so new files are never hidden by the archive's ``.gitignore``. A slice run
elsewhere is merged into a packed folder by unpacking it, copying the slice's files in and packing it
again: pack replaces the archive when the unpacked copies still hold every file it holds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

ARCHIVE = "raw.tar.xz"
PACKED = ("logs", "serving")  # a run folder's bulky subfolders, as the runner writes them
IGNORE = ".gitignore"
IGNORE_HEADER = "# unpacked from raw.tar.xz (python -m runner.raw_archive): the archive is what is kept\n"


def is_packed(folder: Path) -> bool:
    return (folder / ARCHIVE).is_file()


def pack(folder: Path) -> list[str]:
    """Move folder's raw subfolders into its archive; the names packed (none: nothing to pack). A packed
    folder is packed again from its unpacked copies (files added to them kept) only where they still hold
    every file of the archive, so that packing never loses one."""
    names = [name for name in PACKED if (folder / name).is_dir()]
    if is_packed(folder):
        lost = _not_unpacked(folder)
        if lost:
            raise ValueError(
                f"{folder}: already packed ({ARCHIVE}), and {len(lost)} of its files are not unpacked beside it"
                f" (first: {lost[0]}); unpack it first (python -m runner.raw_archive unpack {folder}),"
                " add what it should hold, then pack"
            )
    if not names:
        return []
    partial = folder / f".{ARCHIVE}.partial"
    with tarfile.open(partial, "w:xz", preset=9) as archive:
        for name in names:
            archive.add(folder / name, arcname=name, filter=_plain)
    partial.rename(folder / ARCHIVE)
    (folder / IGNORE).write_text(IGNORE_HEADER + "".join(f"/{name}/\n" for name in names))
    for name in names:
        shutil.rmtree(folder / name)
    return names


def _not_unpacked(folder: Path) -> list[str]:
    """The archive's files that are not in folder (as regular files)."""
    with tarfile.open(folder / ARCHIVE) as archive:
        return [m.name for m in archive.getmembers() if m.isfile() and not (folder / m.name).is_file()]


def unpack(folder: Path, keep_archive: bool = True) -> list[str]:
    """Put the archive's subfolders back (those missing); without keep_archive the folder is a plain run
    folder again (archive and its .gitignore removed). The names unpacked."""
    if not is_packed(folder):
        return []
    with tarfile.open(folder / ARCHIVE) as archive:
        members = archive.getmembers()
        missing = sorted({m.name.split("/", 1)[0] for m in members} - {p.name for p in folder.iterdir()})
        wanted = [m for m in members if m.name.split("/", 1)[0] in missing]
        archive.extractall(folder, members=wanted, filter="data")
    if not keep_archive:
        (folder / ARCHIVE).unlink()
        (folder / IGNORE).unlink(missing_ok=True)
    return missing


def unpack_for(path: Path) -> Path:
    """path (a file or folder inside a run folder) with its run folder's archive unpacked where path is not
    there but an enclosing folder is packed (an analysis script given results/<card>/<name>/serving/<cell>)."""
    if not path.exists():
        for folder in path.absolute().parents:
            if is_packed(folder):
                unpack(folder)
                break
    return path


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Members without this machine's owner, so an archive is the same whoever packed it."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.raw_archive", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER", help="run folders (results/<card>/<name>)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            print(f"error: {folder}: no such run folder", file=sys.stderr)
            return 1
        try:
            names = pack(folder) if args.action == "pack" else unpack(folder)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        what = ", ".join(f"{n}/" for n in names) or "nothing"
        print(f"{folder}: {args.action}ed {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
