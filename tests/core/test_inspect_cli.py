import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from neurorg_core import cli

REPO = Path(__file__).resolve().parents[2]


def make_plate(folder: Path, wells=("B02", "B03"), dtype=np.uint16) -> Path:
    folder.mkdir(parents=True)
    for well in wells:
        for site in (1, 2):
            for ch in (1, 2, 3):
                tifffile.imwrite(folder / f"exp_{well}_s{site}_w{ch}.tif", np.full((130, 140), ch, dtype))
    return folder


def test_inspect_scoreable_plate(tmp_path, capsys):
    root = make_plate(tmp_path / "plate")
    pm = tmp_path / "map.csv"
    pm.write_text("Metadata_Well,Metadata_Role\nB02,control\nB03,disease\nH12,empty\n")
    assert cli.main(["inspect", str(root), "--plate-map", str(pm)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "imagexpress" and report["plate_format"] == 96
    assert report["wells"] == ["B02", "B03"] and report["fields_per_well"] == {"B02": 2, "B03": 2}
    assert report["channel_ids"] == ["w1", "w2", "w3"]
    assert report["channel_map"] == {"nucleus": "w1", "neuron": "w2", "microglia": "w3"}
    assert report["dtype"] == "uint16" and report["field_shape"] == [130, 140]
    assert report["file_problems"] == [] and report["plate_map_problems"] == []
    assert report["scoreable"] is True
    # how the shipped model would cut it: its 128 px crops, the scale assumed (no pixel size in
    # these files), the 16-bit data's 8 significant bits detected (every value is 1..3)
    crops = report["crops"]
    assert crops["crop_edge_px"] == 128 and crops["plate_pixel_size_um"] is None
    assert crops["intensity_bits"] == 8 and crops["overlapping_tiles"] is True
    assert any("pixel size is unknown" in n for n in crops["notes"])


def test_inspect_tells_the_crop_scale_from_the_files_and_refuses_fields_smaller_than_a_crop(tmp_path, capsys):
    from neurorg_core.synth import write_synthetic_plates

    folder = write_synthetic_plates(tmp_path / "mag", seed=1, n_fields=1, size=256, magnification=2.0,
                                    wells=["B02", "B03"])[0]
    assert cli.main(["inspect", str(folder)]) == 0
    crops = json.loads(capsys.readouterr().out)["crops"]
    assert crops["plate_pixel_size_um"] == 0.325 and crops["pixel_size_source"] == "MetaMorph"
    assert crops["crop_edge_px"] == 256 and crops["notes"] == []
    small = write_synthetic_plates(tmp_path / "small", seed=1, n_fields=1, size=100, wells=["B02"])[0]
    assert cli.main(["inspect", str(small)]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["scoreable"] is False
    assert "smaller than the 128 px crop the model needs" in out.err


def test_inspect_channel_override(tmp_path, capsys):
    root = make_plate(tmp_path / "plate")
    assert cli.main(["inspect", str(root), "--channels", "nucleus=w3,microglia=w1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["channel_map"] == {"nucleus": "w3", "neuron": "w2", "microglia": "w1"}


def test_inspect_plate_map_problems_exit_non_zero(tmp_path, capsys):
    root = make_plate(tmp_path / "plate")
    pm = tmp_path / "map.csv"
    pm.write_text("well,role\nB02,control\nB04,boss\n")
    assert cli.main(["inspect", str(root), "--plate-map", str(pm)]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["scoreable"] is False
    assert any("unknown role" in p for p in report["plate_map_problems"])
    assert "not scoreable" in captured.err and "Traceback" not in captured.err


def test_inspect_header_problem_exit_non_zero(tmp_path, capsys):
    root = make_plate(tmp_path / "plate")
    (root / "exp_B03_s2_w1.tif").write_bytes(b"garbage, not a tiff")
    assert cli.main(["inspect", str(root)]) == 2
    captured = capsys.readouterr()
    problems = json.loads(captured.out)["file_problems"]
    assert problems == [p for p in problems if "exp_B03_s2_w1.tif, well B03" in p] and len(problems) == 1


def test_inspect_unsafe_zip_one_line_error(tmp_path, capsys):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../etc/evil.tif", b"x")
    assert cli.main(["inspect", str(zpath)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: evil.zip: refusing the whole zip") and err.count("\n") == 1


def test_inspect_subprocess_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "neurorg_core", "inspect", str(tmp_path / "empty")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert "empty: no image files found" in run.stderr and "Traceback" not in run.stderr
    root = make_plate(tmp_path / "zipped_src")
    zpath = tmp_path / "plate.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in root.iterdir():
            zf.write(p, p.name)
    run = subprocess.run(
        [sys.executable, "-m", "neurorg_core", "inspect", str(zpath), "--channels", "nucleus=w9"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2 and "ids found: w1, w2, w3" in run.stderr
    run = subprocess.run([sys.executable, "-m", "neurorg_core", "inspect", str(zpath)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and json.loads(run.stdout)["source"] == str(zpath)


def test_inspect_picks_the_plate_of_a_multi_plate_map_as_score_does(tmp_path, capsys):
    root = make_plate(tmp_path / "Plate_07")
    pm = tmp_path / "map.csv"
    pm.write_text("Plate,Well,Role\nplate_07,B02,control\nplate_07,B03,disease\n"
                  "plate_08,B02,disease\nplate_08,B03,control\n")
    assert cli.main(["inspect", str(root), "--plate-map", str(pm)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plate_map_problems"] == [] and report["scoreable"] is True
