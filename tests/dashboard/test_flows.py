"""Upload -> score -> heatmap -> treatments, driven by widget keys through AppTest with a real
(tiny, random-weight) model bundle and the real pipeline; plus the first-start demo and the
single-channel button."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import flows, resources
from dashboard_fixtures import APP, shown
from neurorg_core.errors import NeuroRGError


def _zip_bytes(folder: Path, *, skip: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.iterdir()):
            if path.name not in skip:
                zf.write(path, f"{folder.name}/{path.name}")
    return buf.getvalue()


@pytest.fixture()
def model_env(app_env: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny models, run on the Keras backend: converting the three single-channel members to
    LiteRT took ~90 s of this file's time, and LiteRT scoring is covered by the browser test
    (the ensemble, through the app) and tests/core (pipeline, bundle files)."""
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tiny_models))
    monkeypatch.setenv("NEURORG_BACKEND", "keras")
    return app_env


def _upload_page() -> AppTest:
    """Open the upload page directly (a ``?page=upload`` link), so the overview's first-start
    demo is not made."""
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.query_params["page"] = "upload"
    at.run()
    assert not at.exception
    assert at.title[0].value == "Upload & score"
    return at


@pytest.mark.slow
def test_upload_zip_score_heatmap_treatments_rescore_and_channels(model_env: Path, tiny_plate: Path) -> None:
    at = _upload_page()
    assert "Upload limit: **1024 MB per file**" in at.caption[0].value
    at.file_uploader(key="upload_images").set_value(
        ("plate_01.zip", _zip_bytes(tiny_plate, skip=("platemap.csv",)), "application/zip"))
    at.file_uploader(key="upload_platemap").set_value(
        ("platemap.csv", (tiny_plate / "platemap.csv").read_bytes(), "text/csv"))
    at.run()
    at.button(key="use_uploads").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # The upload was saved under Config().upload_dir and the zip extracted there.
    saved = list((model_env / "data" / "uploads").glob("*/images/plate_01.zip"))
    assert len(saved) == 1
    summary = dict(at.dataframe[0].value.to_numpy().tolist())
    assert summary["Layout"] == "imagexpress" and summary["Plate format"] == "96 wells"
    assert summary["Wells imaged"].startswith("88") and summary["Channels found"] == "w1, w2, w3"
    roles = [at.selectbox(key=f"role_{r}").value for r in ("nucleus", "neuron", "microglia")]
    assert roles == ["w1", "w2", "w3"]
    assert any("matches the images" in s.value for s in at.success)

    # Score: the page switches to the new plate's heatmap.
    at.text_input(key="plate_name").set_value("uploaded plate").run()
    at.button(key="score").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Plate heatmap"
    assert at.selectbox(key="plate_select").value == "uploaded plate"
    assert any("SYNTHETIC" in w.value for w in at.warning)  # the zip carries ground_truth.csv
    assert len(at.get("plotly_chart")) == 1
    first = resources.store().list_runs("uploaded plate")
    assert int(first["Cache_misses"].iloc[0]) == 88

    at.switch_page("views/treatments.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Treatments"
    # A random-weight model's P(control) follows no treatment: the page either says the
    # assay window is empty, in plain words, or shows the treatment table; it never fails.
    assert (any("assay window is empty" in i.value for i in at.info)
            or any("Q_welch" in df.value.columns for df in at.dataframe))

    # Back on the upload page, the same name is offered to open as is, or to score again for free.
    at.switch_page("views/upload.py").run()
    at.text_input(key="plate_name").set_value("uploaded plate").run()
    assert any("already in the result store" in i.value for i in at.info)
    assert at.button(key="score").label == "Score again"
    at.button(key="score").click().run()
    runs = resources.store().list_runs("uploaded plate")
    assert len(runs) == 2
    assert int(runs["Cache_misses"].iloc[0]) == 0 and int(runs["Cache_hits"].iloc[0]) == 88
    at.switch_page("views/upload.py").run()
    at.text_input(key="plate_name").set_value("uploaded plate").run()
    at.button(key="open_stored").click().run()
    assert at.title[0].value == "Plate heatmap"

    # Channels: missing single-channel scores are offered as a button; the ensemble comes from cache.
    at.switch_page("views/channels.py").run()
    assert any("not been scored with the single-channel models" in i.value for i in at.info)
    at.button(key="score_channels").click().run()
    assert not at.exception
    run_id = resources.store().latest_run_id("uploaded plate")
    assert len(resources.store().load_channel_scores(run_id)) == 88
    params = resources.store().load_run(run_id)["params"]
    assert params["backend"] == "keras" and params["backend_ran"] == ["keras"]   # as the scored run chose
    # Untrained models give constant outputs, so r is undefined: said in words, not a crash.
    assert at.title[0].value == "Channels" and not at.error


def test_upload_page_reports_bad_input_in_plain_words(model_env: Path, tiny_plate: Path) -> None:
    at = _upload_page()
    at.text_input(key="server_images").set_value(str(model_env / "nowhere"))
    at.button(key="use_server_path").click().run()
    assert not at.exception
    assert "no such file or folder" in at.error[0].value and "nowhere" in at.error[0].value

    bad_map = model_env / "bad_map.csv"
    bad_map.write_text("Metadata_Well,Metadata_Role\nA02,control\nZZ9,sideways\n")
    at.text_input(key="server_images").set_value(str(tiny_plate))
    at.text_input(key="server_platemap").set_value(str(bad_map))
    at.button(key="use_server_path").click().run()
    assert not at.exception
    text = at.error[0].value
    assert "plate map has problems" in text and "ZZ9" in text and "sideways" in text


def test_channel_roles_must_be_distinct(model_env: Path, tiny_plate: Path) -> None:
    at = _upload_page()
    at.text_input(key="server_images").set_value(str(tiny_plate))
    at.text_input(key="server_platemap").set_value(str(tiny_plate / "platemap.csv"))
    at.button(key="use_server_path").click().run()
    at.selectbox(key="role_neuron").set_value("w1").run()
    assert not at.exception
    assert "two roles point at the same channel" in at.error[0].value


def test_save_uploads_refuses_mixed_and_unknown_files(model_env: Path) -> None:
    with pytest.raises(NeuroRGError, match="not both"):
        flows.save_uploads([("a.zip", b"x"), ("A01_s1.tif", b"y")], None)
    with pytest.raises(NeuroRGError, match="not accepted"):
        flows.save_uploads([("notes.docx", b"x")], None)
    with pytest.raises(NeuroRGError, match="no image files"):
        flows.save_uploads([], None)
    folder = flows.save_uploads([("../../evil.tif", b"x")], ("map.csv", b"Metadata_Well\nA01\n"))
    assert (folder / "images" / "evil.tif").read_bytes() == b"x"  # stays inside the upload folder
    assert folder.parent == model_env / "data" / "uploads"


@pytest.mark.slow
def test_first_start_renders_and_scores_the_synthetic_demo(model_env: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURORG_DEMO_FIELDS", "1")
    monkeypatch.setenv("NEURORG_DEMO_SIZE", "64")
    monkeypatch.setenv("NEURORG_READOUT", "p_control")
    at = AppTest.from_file(str(APP), default_timeout=240).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("First start" in i.value and "SYNTHETIC" in i.value for i in at.info)
    assert any("SYNTHETIC" in w.value for w in at.warning)
    assert resources.plate_names() == [resources.DEMO_PLATE]
    # scored with the configured readout and backend (NEURORG_READOUT, NEURORG_BACKEND), as Upload & score is
    params = resources.store().load_run(resources.store().latest_run_id(resources.DEMO_PLATE))["params"]
    assert params["readout"] == "p_control" and params["backend"] == "keras"
    demo = model_env / "data" / "demo" / "plate_01"
    assert (demo / "ground_truth.csv").is_file() and (demo / "platemap.csv").is_file()
    # Next start opens it from the store: nothing is rendered or scored again.
    again = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not any("First start" in i.value for i in again.info)
    assert len(resources.store().list_runs(resources.DEMO_PLATE)) == 1


def test_multi_plate_map_asks_which_plate(model_env: Path, tiny_plate: Path) -> None:
    import pandas as pd

    one = pd.read_csv(tiny_plate / "platemap.csv")
    both = pd.concat([one, one.assign(Metadata_Plate="other plate")])
    both.to_csv(model_env / "two_plates.csv", index=False)
    at = _upload_page()
    at.text_input(key="server_images").set_value(str(tiny_plate))
    at.text_input(key="server_platemap").set_value(str(model_env / "two_plates.csv"))
    at.button(key="use_server_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="map_plate").options == ["other plate", "plate_01"]
    # the images' own plate is chosen to begin with (platemap.select_plate), not the first in the list
    assert at.selectbox(key="map_plate").value == "plate_01"
    assert any("matches the images: 96 wells" in s.value for s in at.success)
    at.selectbox(key="map_plate").set_value("other plate").run()
    assert at.selectbox(key="map_plate").value == "other plate"   # the user's choice stands


def test_corrupt_image_files_are_listed_before_scoring(model_env: Path, tiny_plate: Path) -> None:
    import shutil

    plate = shutil.copytree(tiny_plate, model_env / "copy" / "plate_01")
    bad = sorted(plate.glob("*_D05_s1_w3.tif"))[0]
    bad.write_bytes(b"not a tiff at all")
    at = _upload_page()
    at.text_input(key="server_images").set_value(str(plate))
    at.text_input(key="server_platemap").set_value(str(plate / "platemap.csv"))
    at.button(key="use_server_path").click().run()
    assert not at.exception
    text = at.error[0].value
    assert "1 image file problem(s)" in text and bad.name in shown(text) and "D05" in text
    assert "score" not in [b.key for b in at.button]  # scoring is not offered


def test_plate_map_added_or_replaced_after_the_images_is_used(model_env: Path, tiny_plate: Path) -> None:
    """Pressing "Use these files" before the plate map's upload has arrived (seen in CI with a
    real browser), or replacing the map afterwards, still scores with the map in the uploader."""
    at = _upload_page()
    at.file_uploader(key="upload_images").set_value(
        ("plate_01.zip", _zip_bytes(tiny_plate, skip=("platemap.csv",)), "application/zip"))
    at.run()
    at.button(key="use_uploads").click().run()
    assert not at.exception
    assert any("Add a plate map" in i.value for i in at.info)

    good = (tiny_plate / "platemap.csv").read_bytes()
    at.file_uploader(key="upload_platemap").set_value(("platemap.csv", good, "text/csv")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Plate map matches the images" in s.value for s in at.success)

    lines = good.decode().splitlines()
    short = "\n".join(lines[:-2] + lines[-1:]) + "\n"   # drops H11, an imaged disease well
    at.file_uploader(key="upload_platemap").set_value(("platemap_v2.csv", short.encode(), "text/csv")).run()
    assert not at.exception
    assert not any("Plate map matches the images" in s.value for s in at.success)
    assert any("Plate map vs images" in w.value and "H11" in w.value for w in at.warning)
    assert Path(at.session_state["platemap_path"]).name == "platemap_v2.csv"
