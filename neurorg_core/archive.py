"""Safe extraction of a plate's ``.zip``: path checks, size and ratio limits, disk space, owners.

One family, one owner (this module). ``extract_plate_zip(zip, work_dir=None)`` is the entry point
``load_plate`` uses; it picks one of two owners for the files:

- no ``work_dir`` (the CLI, scripts): a temporary folder that the caller owns and removes
  (``Extraction.owned``; ``Plate.close`` does it);
- ``work_dir`` (the app): ``extract_zip_keyed(zip, work_dir)``, the app's cache of extractions, one
  folder per zip file *version* (path, size, mtime), reused while the zip is unchanged and removed
  when the zip is replaced.

Both extract with ``extract_zip(zip, dest)``, which checks every member before anything is
written and then counts the bytes it really writes (a member's header is never trusted).

Limits (``ZipLimits``; why these numbers):

- ``max_bytes`` 64 GiB in all: a 1536-well plate x 25 fields x 5 channels of 2048^2 16-bit images is
  about 1.6 TB, so plates this large are scored from a folder, not a zip.
- free disk space: the declared total plus ``reserve_bytes`` (256 MiB) must fit on the destination's
  file system (``shutil.disk_usage``), checked before extracting; the bytes really written are counted
  against the same budget while extracting.
- compression ratio: microscope images carry camera noise and compress about 1.5-4:1 (deflate); even
  noiseless synthetic plates stay under 10:1. Deflate cannot exceed about 1032:1, which it reaches
  only on constant data. So a member expanding more than ``max_member_ratio`` (1000) times, or a
  whole zip more than ``max_total_ratio`` (100) times, is refused as a zip bomb. Ratios are checked
  only for members / zips expanding beyond ``ratio_floor`` (16 MiB): a small blank image is harmless
  whatever its ratio.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from neurorg_core.cache import file_version
from neurorg_core.errors import NeuroRGError, printable

log = logging.getLogger(__name__)

MAX_ZIP_BYTES = 64 * 1024**3
"""Largest total uncompressed size (bytes) we agree to extract from a zip: 64 GiB."""

COMPLETE_MARKER = ".neurorg-extracted"
"""File written last into a keyed extraction: a folder without it is a half-done extraction."""

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZipLimits:
    """What a zip may expand to (see the module docstring for the reasons)."""

    max_bytes: int = MAX_ZIP_BYTES
    max_member_ratio: float = 1000.0
    max_total_ratio: float = 100.0
    ratio_floor: int = 16 * 1024**2
    reserve_bytes: int = 256 * 1024**2


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' leaves the extraction folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def _free_bytes(dest: Path) -> tuple[int, Path]:
    """Free bytes on the file system that will hold ``dest`` (its nearest existing ancestor)."""
    probe = dest.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except UnicodeDecodeError as exc:
        raise NeuroRGError(
            f"a member's name is marked as UTF-8 but is not valid UTF-8 ({exc.reason} at byte "
            f"{exc.start}); re-create the zip with file names in UTF-8", path=zip_path,
        ) from exc
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise NeuroRGError(f"not a readable zip file ({exc})", path=zip_path) from exc


def _check_members(zf: zipfile.ZipFile, zip_path: Path, dest: Path,
                   limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The zip's files after every check that needs no extraction (raises on the first failure)."""
    infos = zf.infolist()
    bad = [f"{printable(i.filename)!r} ({why})" for i in infos if (why := _unsafe_member(i))]
    if bad:
        raise NeuroRGError(
            f"refusing the whole zip, nothing extracted: unsafe member(s) {', '.join(bad[:5])}"
            + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""), path=zip_path,
        )
    files = [i for i in infos if not i.is_dir()]
    if not files:
        raise NeuroRGError("the zip is empty; expected the plate's image files", path=zip_path)
    seen: set[str] = set()
    for i in files:   # a second entry of one path would silently replace the first on extraction
        name = i.filename.replace("\\", "/")
        if name in seen:
            raise NeuroRGError(
                f"refusing the whole zip, nothing extracted: it holds {printable(name)!r} twice (two "
                "entries for one path, e.g. a file added again); re-create the zip", path=zip_path,
            )
        seen.add(name)
    total = sum(i.file_size for i in files)
    packed = sum(i.compress_size for i in files)
    if total > limits.max_bytes:
        raise NeuroRGError(
            f"the zip expands to {total} bytes, more than the limit of {limits.max_bytes} bytes",
            path=zip_path,
        )
    for i in files:
        ratio = i.file_size / max(i.compress_size, 1)
        if i.file_size > limits.ratio_floor and ratio > limits.max_member_ratio:
            raise NeuroRGError(
                f"refusing a zip bomb, nothing extracted: member {printable(i.filename)!r} expands "
                f"{ratio:.0f} times ({_size(i.compress_size)} -> {_size(i.file_size)}); the limit is "
                f"{limits.max_member_ratio:.0f}:1 (images compress far less)", path=zip_path,
            )
    if total > limits.ratio_floor and total / max(packed, 1) > limits.max_total_ratio:
        raise NeuroRGError(
            f"refusing a zip bomb, nothing extracted: the zip expands {total / max(packed, 1):.0f} "
            f"times ({_size(packed)} -> {_size(total)}); the limit is {limits.max_total_ratio:.0f}:1 "
            "(images compress far less)", path=zip_path,
        )
    free, where = _free_bytes(dest)
    if total + limits.reserve_bytes > free:
        raise NeuroRGError(
            f"the zip expands to {_size(total)} but {where} has only {_size(free)} free (keeping "
            f"{_size(limits.reserve_bytes)} spare); free some space, or extract elsewhere (CLI: set "
            "TMPDIR; app: NEURORG_DATA_DIR), or unzip it yourself and give the folder", path=zip_path,
        )
    return files


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int,
                 zip_path: Path) -> int:
    """Write one member, counting the bytes really written; returns that count."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise NeuroRGError(
                    f"member {printable(info.filename)!r} expands beyond the {info.file_size} bytes "
                    "its header declares; the zip is forged or corrupt, nothing kept", path=zip_path,
                )
            if written > budget:
                raise NeuroRGError(
                    f"the zip expands beyond its declared size and the space allowed ({_size(budget)}); "
                    "nothing kept", path=zip_path,
                )
            out.write(chunk)
    return written


def extract_zip(zip_path: str | Path, dest: str | Path, *, max_bytes: int | None = None,
                limits: ZipLimits | None = None) -> Path:
    """Extract a zip safely into ``dest`` (created; must be empty if it exists).

    Every member is checked before anything is written: an absolute path, a ``..`` component or
    a symbolic link refuses the whole zip, and so do a total uncompressed size above
    ``max_bytes``, a compression ratio above the limits of ``ZipLimits`` (a zip bomb) and a total
    that does not fit the destination's free disk space. While extracting, the bytes really
    written are counted: a member that expands beyond its declared size stops the extraction. A
    failure part-way removes what was extracted.

    Parameters
    ----------
    zip_path
        The ``.zip`` file.
    dest
        Folder to extract into.
    max_bytes
        Largest total uncompressed size, bytes (overrides ``limits.max_bytes``; default: that).
    limits
        Ratio, free-space and size limits; default ``ZipLimits()``.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    NeuroRGError
        Naming the zip: unreadable, empty, unsafe member, too large, a zip bomb, not enough disk
        space, a corrupt or forged member, the disk filling up.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    limits = limits or ZipLimits()
    if max_bytes is not None and max_bytes != limits.max_bytes:
        limits = replace(limits, max_bytes=max_bytes)
    with _open_zip(zip_path) as zf:
        files = _check_members(zf, zip_path, dest, limits)
        if dest.exists() and any(dest.iterdir()):
            raise NeuroRGError(f"extraction folder {printable(str(dest))} is not empty", path=zip_path)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        declared = sum(i.file_size for i in files)
        written = 0
        try:
            for info in files:
                target = (root / info.filename.replace("\\", "/")).resolve()
                if not target.is_relative_to(root):
                    raise NeuroRGError(f"member {printable(info.filename)!r} leaves the extraction "
                                       "folder", path=zip_path)
                target.parent.mkdir(parents=True, exist_ok=True)
                written += _copy_member(zf, info, target, declared - written, zip_path)
        except OSError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NeuroRGError(
                    f"the disk filled up while extracting ({exc.strerror}); nothing kept. Free some "
                    "space or unzip the plate yourself and give the folder", path=zip_path,
                ) from exc
            raise NeuroRGError(f"zip member is corrupt or cannot be written ({exc})", path=zip_path) from exc
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise NeuroRGError(f"zip member is corrupt ({exc})", path=zip_path) from exc
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    log.info("extracted %d files (%s) from %s into %s", len(files), _size(written), zip_path.name, dest)
    return dest


# --- the app's extraction cache ----------------------------------------------------------------

def zip_stamp(zip_path: str | Path) -> str:
    """A short key of one version of a zip file: its resolved path and ``cache.file_version``.

    A zip replaced at the same path (copied over, re-exported, even with its old size and time)
    gets a new stamp.
    """
    path = Path(zip_path)
    try:
        st = path.stat()
    except OSError as exc:
        raise NeuroRGError(f"cannot read the zip ({exc.strerror})", path=path) from exc
    digest = hashlib.blake2b(digest_size=8)
    digest.update(os.fsencode(str(path.resolve())))
    digest.update(repr(file_version(st)).encode())
    return digest.hexdigest()


def _path_key(zip_path: Path) -> str:
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", printable(zip_path.stem))[:40] or "plate"
    where = hashlib.blake2b(os.fsencode(str(zip_path.resolve())), digest_size=4).hexdigest()
    return f"{safe}-{where}"


def extract_zip_keyed(zip_path: str | Path, work_dir: str | Path, *,
                      limits: ZipLimits | None = None) -> Path:
    """The extraction of this version of ``zip_path`` under ``work_dir`` (made once, then reused).

    The folder is ``work_dir/<zip stem>-<path key>-<zip_stamp>``. It is reused while the zip keeps
    its version (``zip_stamp``); when the zip is replaced, the next call extracts the new
    version and removes the extractions of the earlier versions of the same path. ``work_dir``
    and everything in it belong to the caller (the app's ``Config().upload_dir / "extracted"``).
    Extraction goes into a hidden temporary sibling that is renamed into place when complete, so a
    reader never sees half a plate, and two callers extracting at once do not collide.

    Raises
    ------
    NeuroRGError
        As ``extract_zip``.
    """
    zip_path, work_dir = Path(zip_path), Path(work_dir)
    prefix = _path_key(zip_path)
    dest = work_dir / f"{prefix}-{zip_stamp(zip_path)}"
    if not (dest / COMPLETE_MARKER).is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=work_dir))
        try:
            extract_zip(zip_path, partial, limits=limits)
            (partial / COMPLETE_MARKER).write_text(str(zip_path.resolve()) + "\n", errors="backslashreplace")
            if dest.exists():   # a half-done folder from a crash, or another caller's finished one
                if (dest / COMPLETE_MARKER).is_file():
                    shutil.rmtree(partial, ignore_errors=True)
                    return dest
                shutil.rmtree(dest, ignore_errors=True)
            os.replace(partial, dest)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if (dest / COMPLETE_MARKER).is_file():   # another caller won the rename
                return dest
            raise NeuroRGError(f"cannot place the extracted plate in {work_dir} ({exc})",
                               path=zip_path) from exc
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    earlier = re.compile(re.escape(prefix) + r"-[0-9a-f]{16}")
    for old in work_dir.iterdir():
        if old != dest and earlier.fullmatch(old.name) and old.is_dir():
            log.info("removing the extraction of an earlier version of %s: %s", zip_path.name, old)
            shutil.rmtree(old, ignore_errors=True)
    return dest


# --- the entry point ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Extraction:
    """Where a plate's zip was extracted, and who removes it."""

    root: Path    # the folder holding the zip's files
    owned: bool   # True: a temporary folder the caller removes; False: the keyed cache's (work_dir's owner)


def extract_plate_zip(zip_path: str | Path, *, work_dir: str | Path | None = None,
                      limits: ZipLimits | None = None) -> Extraction:
    """Extract a plate's zip for reading: the one entry point (``load_plate`` calls it).

    Parameters
    ----------
    zip_path
        The ``.zip`` file.
    work_dir
        The caller's cache of extractions (``extract_zip_keyed``: one folder per zip version,
        reused, older versions removed). Default: a new temporary folder (``tempfile``, so
        ``TMPDIR``) that the caller owns and must remove (``Extraction.owned``).
    limits
        Size, ratio and free-space limits; default ``ZipLimits()``.

    Raises
    ------
    NeuroRGError
        As ``extract_zip``; nothing is left behind when it fails.
    """
    zip_path = Path(zip_path)
    if work_dir is not None:
        return Extraction(extract_zip_keyed(zip_path, work_dir, limits=limits), owned=False)
    dest = Path(tempfile.mkdtemp(prefix="neurorg_zip_"))
    try:
        extract_zip(zip_path, dest, limits=limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return Extraction(dest, owned=True)
