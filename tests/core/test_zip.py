"""Zips as labs and attackers make them: bombs, forged sizes, full disks, non-UTF-8 names; who owns
an extraction, and a replaced zip read again."""

from __future__ import annotations

import gc
import io
import os
import re
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from neurorg_core.archive import COMPLETE_MARKER, extract_zip, extract_zip_keyed
from neurorg_core.errors import NeuroRGError
from neurorg_core.plates import load_plate
from tests.private_mount import SCRIPT_HELPERS, run_in_private_mount

MiB = 1 << 20


def write_plate(folder: Path, wells=("B02", "B03")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for w, well in enumerate(wells):
        for ch in (1, 2, 3):
            tifffile.imwrite(folder / f"exp_{well}_s1_w{ch}.tif", np.full((24, 32), 10 * w + ch, np.uint8))
    return folder


def zip_folder(folder: Path, zpath: Path) -> Path:
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{folder.name}/{p.name}")
    return zpath


def zeros_member(zf: zipfile.ZipFile, name: str, size: int) -> None:
    """Stream ``size`` zero bytes into a deflated member (its header tells the truth)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as out:
        chunk = bytes(MiB)
        for start in range(0, size, MiB):
            out.write(chunk[:min(MiB, size - start)])


# --- bombs and forged sizes ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """200 MB of zeros in one member, compressed to about 200 KB, sizes declared honestly."""
    zpath = tmp_path_factory.mktemp("bomb") / "plate.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("plate/exp_B02_s1_w2.tif", b"small and honest")
        zeros_member(zf, "plate/exp_B02_s1_w1.tif", 200 * MiB)
    return zpath


def test_zip_bomb_is_refused_before_anything_is_written(bomb, tmp_path):
    info = zipfile.ZipFile(bomb).getinfo("plate/exp_B02_s1_w1.tif")
    assert info.file_size == 200 * MiB and info.compress_size < 300_000
    with pytest.raises(NeuroRGError, match=r"plate.zip: refusing a zip bomb, nothing extracted: member "
                                           r"'plate/exp_B02_s1_w1.tif' expands 10\d\d times"):
        extract_zip(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_bomb_through_load_plate_and_the_cli(bomb, tmp_path, capsys, monkeypatch):
    from neurorg_core import cli

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(NeuroRGError, match="zip bomb"):
        load_plate(bomb)
    assert cli.main(["inspect", str(bomb)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: plate.zip: refusing a zip bomb") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []   # no temporary extraction left behind


def test_many_small_members_adding_up_to_a_bomb(tmp_path):
    zpath = tmp_path / "many.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):   # each member is 1 MiB, under the per-member floor
            zf.writestr(f"x_B02_s{i + 1}_w1.tif", bytes(MiB))
    with pytest.raises(NeuroRGError, match=r"the zip expands 10\d\d times \(.* -> 40.0 MiB\); the limit is 100:1"):
        extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_member_whose_header_understates_its_size_is_not_trusted(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("exp_B02_s1_w1.tif", bytes(10 * MiB))
    data = bytearray(buf.getvalue())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 1000)     # both headers now claim 1000 bytes
    struct.pack_into("<I", data, central + 24, 1000)
    zpath = tmp_path / "liar.zip"
    zpath.write_bytes(bytes(data))
    assert zipfile.ZipFile(zpath).infolist()[0].file_size == 1000   # passes every check on paper
    with pytest.raises(NeuroRGError, match="liar.zip: zip member is corrupt"):
        extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()   # at most the declared bytes were written, then removed


_SMALL_DISKS = SCRIPT_HELPERS + """
from neurorg_core.archive import ZipLimits, extract_zip

small, few = tmp / "small", tmp / "few"
small.mkdir(); few.mkdir()
mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small))              # 8 MiB of space
mount("-t", "tmpfs", "-o", "size=8m,nr_inodes=4", "tmpfs", str(few))    # space, but 4 inodes
no_spare = ZipLimits(reserve_bytes=0)
out = {
    "with_spare": error_of(lambda: extract_zip(tmp / "noise.zip", small / "a")),
    "fits": error_of(lambda: extract_zip(tmp / "noise.zip", small / "b", limits=no_spare)),
    "second": error_of(lambda: extract_zip(tmp / "noise.zip", small / "c", limits=no_spare)),
    "fills_up": error_of(lambda: extract_zip(tmp / "many.zip", few / "out", limits=no_spare)),
    "small": sorted(p.relative_to(small).as_posix() for p in small.rglob("*")),
    "few": sorted(p.name for p in few.iterdir()),
}
print(json.dumps(out))
"""


def test_free_space_on_a_real_small_disk_is_checked_and_a_disk_that_fills_keeps_nothing(tmp_path):
    """Real file systems: an 8 MiB tmpfs, and one with 4 inodes (so creating files fails with
    ENOSPC part-way, although the free bytes passed the check). Mounted in a private mount
    namespace (``unshare --mount``, plus ``--user --map-root-user`` when not root)."""
    with zipfile.ZipFile(tmp_path / "noise.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("exp_B02_s1_w1.tif", np.random.default_rng(0).bytes(5 * MiB))
    with zipfile.ZipFile(tmp_path / "many.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for ch in range(1, 7):
            zf.writestr(f"exp_B02_s1_w{ch}.tif", np.random.default_rng(ch).bytes(4096))
    out = run_in_private_mount(_SMALL_DISKS, tmp_path)
    assert re.match(r"noise.zip: the zip expands to 5.0 MiB but .*small has only 8.0 MiB free "
                    r"\(keeping 256.0 MiB spare\)", out["with_spare"] or ""), out["with_spare"]
    assert out["fits"] is None                       # without the spare, 5 MiB fits in 8
    assert re.match(r"noise.zip: the zip expands to 5.0 MiB but .*small has only 3.0 MiB free",
                    out["second"] or ""), out["second"]   # the space the first copy took is seen
    assert out["small"] == ["b", "b/exp_B02_s1_w1.tif"]   # refused ones wrote nothing
    assert out["fills_up"].startswith("many.zip: the disk filled up while extracting (No space left "
                                      "on device); nothing kept"), out["fills_up"]
    assert out["few"] == []                          # the half-done extraction is removed


# --- names that are not UTF-8 -------------------------------------------------------------------

def _raw_name_zip(zpath: Path, flag_utf8: bool) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for ch in (1, 2, 3):
            tif = io.BytesIO()
            tifffile.imwrite(tif, np.full((16, 16), ch, np.uint8))
            zf.writestr(f"AAAA_B02_s1_w{ch}.tif", tif.getvalue())
    data = bytearray(buf.getvalue())
    data[:] = data.replace(b"AAAA", b"\xff\xfe\xe9x")
    if flag_utf8:   # claim UTF-8 (general purpose flag bit 11) in every header
        for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            pos = data.find(sig)
            while pos >= 0:
                flags = struct.unpack_from("<H", data, pos + at)[0] | 0x800
                struct.pack_into("<H", data, pos + at, flags)
                pos = data.find(sig, pos + 4)
    zpath.write_bytes(bytes(data))


def test_zip_member_names_in_a_legacy_encoding_are_read(tmp_path):
    zpath = tmp_path / "legacy.zip"
    _raw_name_zip(zpath, flag_utf8=False)
    with load_plate(zpath) as plate:   # zip's legacy code page: every byte is some character
        assert plate.wells() == ["B02"]
        assert plate.read_field(plate.fields[0])[0, 0].tolist() == [1, 2, 3]


def test_zip_member_name_falsely_marked_utf8_is_a_clear_error(tmp_path):
    zpath = tmp_path / "badname.zip"
    _raw_name_zip(zpath, flag_utf8=True)
    with pytest.raises(NeuroRGError, match="badname.zip: a member's name is marked as UTF-8 but is not valid"):
        load_plate(zpath)


# --- who owns an extraction -----------------------------------------------------------------------

def test_plate_owns_its_temporary_extraction(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    zpath = zip_folder(write_plate(tmp_path / "src"), tmp_path / "p.zip")
    with load_plate(zpath) as plate:
        assert plate.source == zpath and plate.root.is_relative_to(tmp_path / "tmp")
        assert plate.read_field(plate.fields[0]).shape == (24, 32, 3) and plate.is_current()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not plate.is_current()   # its extraction is gone: a cache must not serve it
    plate = load_plate(zpath)
    root = plate.root
    del plate
    gc.collect()
    assert not root.exists()   # a plate nobody closed still cleans up when it goes
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("no images")
    with pytest.raises(NeuroRGError, match="no image files found"):
        load_plate(zip_folder(tmp_path / "odd", tmp_path / "odd.zip"))
    assert list((tmp_path / "tmp").iterdir()) == []   # nor when loading fails


def test_keyed_extraction_is_reused_and_replaced_with_the_zip(tmp_path):
    zpath = zip_folder(write_plate(tmp_path / "v1"), tmp_path / "plate.zip")
    work = tmp_path / "work"
    first = extract_zip_keyed(zpath, work)
    assert (first / COMPLETE_MARKER).is_file()
    marker_time = (first / COMPLETE_MARKER).stat().st_mtime_ns
    assert extract_zip_keyed(zpath, work) == first
    assert (first / COMPLETE_MARKER).stat().st_mtime_ns == marker_time   # not extracted again
    other = zip_folder(write_plate(tmp_path / "other"), tmp_path / "other.zip")
    kept = extract_zip_keyed(other, work)

    zip_folder(write_plate(tmp_path / "v2", wells=("B02", "B03", "C04")), zpath)
    os.utime(zpath, ns=(marker_time + 10**9, marker_time + 10**9))
    second = extract_zip_keyed(zpath, work)
    assert second != first and not first.exists()   # the earlier version is removed
    assert kept.exists()                             # another zip's extraction is not
    assert sorted(p.name for p in work.iterdir()) == sorted([second.name, kept.name])


def test_replaced_zip_is_read_again(tmp_path):
    zpath = zip_folder(write_plate(tmp_path / "plate"), tmp_path / "plate.zip")
    work = tmp_path / "work"
    old = load_plate(zpath, work_dir=work)
    assert old.wells() == ["B02", "B03"] and old.is_current()
    assert load_plate(zpath, work_dir=work).root == old.root   # unchanged: the extraction is reused
    shutil.rmtree(tmp_path / "plate")
    zip_folder(write_plate(tmp_path / "plate", wells=("B02", "B03", "C04")), zpath)
    os.utime(zpath, ns=(old.root.stat().st_mtime_ns + 10**9,) * 2)
    assert not old.is_current()
    new = load_plate(zpath, work_dir=work)
    assert new.wells() == ["B02", "B03", "C04"] and new.is_current()
    assert not old.root.exists() and len(list(work.iterdir())) == 1


def test_a_zip_replaced_with_its_old_size_and_time_is_read_again(tmp_path):
    """Size and modification time can repeat (same layout, times kept by a copy or set back); the
    change time (``cache.file_version``) cannot, so the new pixels are read."""
    def stored_zip(folder: Path, zpath: Path) -> Path:       # uncompressed: same layout, same size
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
            for p in sorted(folder.iterdir()):
                zf.write(p, f"{folder.name}/{p.name}")
        return zpath

    zpath = stored_zip(write_plate(tmp_path / "plate"), tmp_path / "plate.zip")
    before = zpath.stat()
    work = tmp_path / "work"
    old = load_plate(zpath, work_dir=work)
    assert old.read_field(old.fields[0])[0, 0].tolist() == [1, 2, 3]
    shutil.rmtree(tmp_path / "plate")
    folder = write_plate(tmp_path / "plate")
    for f in folder.iterdir():                                 # same files, other pixels
        tifffile.imwrite(f, tifffile.imread(f) + 100)
    zpath.write_bytes(stored_zip(folder, tmp_path / "new.zip").read_bytes())   # over the old one
    os.utime(zpath, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = zpath.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert not old.is_current()
    new = load_plate(zpath, work_dir=work)
    assert new.root != old.root and new.read_field(new.fields[0])[0, 0].tolist() == [101, 102, 103]


def test_folder_listing_changes_make_a_plate_stale(tmp_path):
    root = write_plate(tmp_path / "p" / "TimePoint_1")
    plate = load_plate(tmp_path / "p")
    assert plate.is_current()
    write_plate(root, wells=("C04",))                      # a new well appears
    assert not plate.is_current()
    fresh = load_plate(tmp_path / "p")
    assert fresh.wells() == ["B02", "B03", "C04"] and fresh.is_current()
    first = fresh.files_of(fresh.fields[0])[0]
    tifffile.imwrite(first, np.zeros((30, 30), np.uint8))   # the remembered header's file, in place
    assert not fresh.is_current()
    assert plate.signature != fresh.signature
