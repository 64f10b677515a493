"""Where the app reads plates from: uploads and extractions keyed by content, and cached plates
that notice a replaced zip or a changed folder instead of serving the old listing forever."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dashboard import flows, resources
from neurorg_core.synth import is_synthetic_plate


def write_plate(folder: Path, wells=("B02", "B03"), value: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for w, well in enumerate(wells):
        for ch in (1, 2, 3):
            tifffile.imwrite(folder / f"exp_{well}_s1_w{ch}.tif",
                             np.full((24, 32), value + 10 * w + ch, np.uint8))
    return folder


def zip_folder(folder: Path, zpath: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{folder.name}/{p.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return zpath


def bump_mtime(path: Path, reference: Path) -> None:
    """Make ``path`` look written a second after ``reference`` (file systems with coarse clocks)."""
    later = reference.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(later, later))


def test_server_zip_replaced_on_disk_is_read_again(app_env: Path, tmp_path: Path) -> None:
    zpath = zip_folder(write_plate(tmp_path / "src"), tmp_path / "plate.zip")
    first = resources.plate(flows.open_images(flows.resolve_server_path(str(zpath))))
    assert first.wells() == ["B02", "B03"] and first.source == zpath
    assert resources.plate(zpath) is first                       # unchanged: served from the cache
    extracted = resources.extraction_dir()
    assert first.root.parent == extracted and len(list(extracted.iterdir())) == 1

    zip_folder(write_plate(tmp_path / "src", wells=("B02", "B03", "C04"), value=100), zpath)
    bump_mtime(zpath, first.root)
    second = resources.plate(zpath)
    assert second is not first and second.wells() == ["B02", "B03", "C04"]
    assert second.read_field(second.fields_of("B02")[0])[0, 0].tolist() == [101, 102, 103]
    assert [p.name for p in extracted.iterdir()] == [second.root.name]   # the old copy is gone


def test_server_folder_with_new_wells_is_listed_again(app_env: Path, tmp_path: Path) -> None:
    root = write_plate(tmp_path / "plate" / "TimePoint_1")
    first = resources.plate(tmp_path / "plate")
    assert first.wells() == ["B02", "B03"]
    write_plate(root, wells=("D05",))
    again = resources.plate(tmp_path / "plate")
    assert again.wells() == ["B02", "B03", "D05"]


def test_field_image_and_file_problems_follow_the_files(app_env: Path, tmp_path: Path) -> None:
    root = write_plate(tmp_path / "plate")
    cmap = json.dumps({}, sort_keys=True)
    before = resources.field_image(str(root), cmap, "B03", 1)
    assert before[0, 0].tolist() == [11, 12, 13]
    assert resources.file_problems(str(root), cmap) == []
    victim = root / "exp_B03_s1_w2.tif"
    tifffile.imwrite(victim, np.full((24, 32), 99, np.uint8))   # rewritten in place, same size
    bump_mtime(victim, root / "exp_B02_s1_w1.tif")
    assert resources.field_image(str(root), cmap, "B03", 1)[0, 0].tolist() == [11, 99, 13]
    victim.write_bytes(b"now broken")
    os.utime(root, ns=(root.stat().st_mtime_ns + 10**9,) * 2)   # e.g. a file renamed into place
    problems = resources.file_problems(str(root), cmap)
    assert len(problems) == 1 and "exp_B03_s1_w2.tif, well B03: not a readable TIFF" in problems[0]


def test_uploads_are_keyed_by_content(app_env: Path, tmp_path: Path) -> None:
    zbytes = zip_folder(write_plate(tmp_path / "src"), tmp_path / "p.zip").read_bytes()
    pm = ("map.csv", b"Metadata_Well,Metadata_Role\nB02,control\nB03,disease\n")
    one = flows.save_uploads([("plate.zip", zbytes)], pm)
    assert flows.save_uploads([("plate.zip", zbytes)], pm) == one            # same files: same folder
    other_map = flows.save_uploads([("plate.zip", zbytes)], (pm[0], pm[1] + b"C04,empty\n"))
    flipped = bytearray(zbytes)
    flipped[100] ^= 0xFF
    changed = flows.save_uploads([("plate.zip", bytes(flipped))], pm)
    assert len({one, other_map, changed}) == 3
    assert flows.plate_map_path(other_map).read_bytes().endswith(b"C04,empty\n")
    assert [p.name for p in app_env.joinpath("data", "uploads").iterdir() if p.name.startswith(".")] == []

    plate = resources.plate(flows.images_path(one))
    assert plate.source == one / "images" / "plate.zip"          # the store will record the zip
    assert plate.root.parent == resources.extraction_dir() and plate.wells() == ["B02", "B03"]


@pytest.mark.parametrize("with_truth", [True, False])
def test_synthetic_zip_is_recognised(app_env: Path, tmp_path: Path, with_truth: bool) -> None:
    extra = {"plate/ground_truth.csv": b"Metadata_Well\nB02\n"} if with_truth else {}
    zpath = zip_folder(write_plate(tmp_path / "plate"), tmp_path / "p.zip", extra)
    assert is_synthetic_plate(zpath) is with_truth


def test_field_images_are_kept_shrunk_and_within_the_image_cache_budget(app_env: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's field-image cache holds display-size copies (at most ``THUMBNAIL_EDGE`` px), not the
    raw 16-bit fields, and no more bytes than ``NEURORG_IMAGE_CACHE_MB`` (#12)."""
    root = tmp_path / "big"
    root.mkdir()
    for well in ("B02", "B03"):
        for ch in (1, 2, 3):
            tifffile.imwrite(root / f"exp_{well}_s1_w{ch}.tif", np.full((1030, 1030), 1000 * ch, np.uint16))
    monkeypatch.setenv("NEURORG_IMAGE_CACHE_MB", "1.01")   # a budget no other test uses: its own cache
    cmap = json.dumps({}, sort_keys=True)
    first = resources.field_image(str(root), cmap, "B02", 1)
    assert first.shape == (344, 344, 3) and first.dtype == np.uint16      # every 3rd pixel of 1030
    assert max(first.shape[:2]) <= resources.THUMBNAIL_EDGE and first[0, 0].tolist() == [1000, 2000, 3000]
    resources.field_image(str(root), cmap, "B03", 1)                     # 2 x 710 kB > 1.01 MB
    stats = resources._thumbnails(1.01).stats()
    assert stats.max_bytes == int(1.01 * 2**20) and stats.bytes <= stats.max_bytes
    assert stats.entries == 1 and stats.evictions == 1
