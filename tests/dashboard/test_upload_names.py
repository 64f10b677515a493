"""The plate name Upload & score suggests for loose uploaded image files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import open_page


def _use_loose_files(at: AppTest, files: list[tuple[str, bytes]], plate_map: bytes) -> None:
    at.file_uploader(key="upload_images").set_value([(name, data, "image/tiff") for name, data in files])
    at.file_uploader(key="upload_platemap").set_value(("platemap.csv", plate_map, "text/csv"))
    at.run()
    at.button(key="use_uploads").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def test_loose_uploaded_files_suggest_their_own_plate_name(app_env: Path, tiny_plate: Path) -> None:
    """Loose image files are saved in the upload's ``images/`` folder, so the suggested plate name
    was "images" for every plate uploaded that way: a name that says nothing, and the next such
    plate was offered "Score again" onto the first one's name."""
    at = open_page("upload")
    tifs = sorted(tiny_plate.glob("*.tif"))
    _use_loose_files(at, [(p.name, p.read_bytes()) for p in tifs], (tiny_plate / "platemap.csv").read_bytes())
    assert tifs[0].name.startswith("plate_01_")
    assert at.text_input(key="plate_name").value == "plate_01"  # what every file name starts with

    # Files whose names carry no common name (multi-channel <well>_s<site>.tif): a name of this
    # upload's own, not "images".
    at = open_page("upload")
    files = []
    for well in ("A01", "A02"):
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.full((32, 32, 3), 40, np.uint8), photometric="rgb")
        files.append((f"{well}_s1.tif", buf.getvalue()))
    _use_loose_files(at, files, b"Metadata_Well,Metadata_Role\nA01,control\nA02,disease\n")
    name = at.text_input(key="plate_name").value
    assert name.startswith("uploaded plate ") and len(name) > len("uploaded plate ")
