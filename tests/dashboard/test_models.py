"""Upload & score's model choice: the installed bundles with their card summaries, a bundle added by
its path on the server, and the study's imported model scoring its own npy layout from the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import flows, resources
from dashboard_fixtures import open_server_plate, shown
from neurorg_core.errors import NeuroRGError
from neurorg_core.model import build_model, save_bundle
from neurorg_core.schema import CALLED_CLASS, MODEL_ID, WELL
from neurorg_core.study import import_study
from tests.study_data import INPUT_SIZE, extract, fold_files, reference, reference_probs


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The study reference data and a one-fold imported B0 bundle outside every model root."""
    folder = extract(tmp_path_factory.mktemp("study_b0"))
    bundle = import_study(fold_files(folder)[:1], folder / "normalize_parameters.pkl",
                          tmp_path_factory.mktemp("elsewhere") / "study_b0", arch="efficientnet_b0",
                          input_size=INPUT_SIZE)
    return folder, bundle.path


@pytest.fixture()
def models_env(app_env: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """NEURORG_MODEL_DIR = the tiny demo-like models; ``<data dir>/models`` holds one more tiny
    ensemble (``mine``) and a folder whose card is broken."""
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tiny_models))
    models = app_env / "data" / "models"
    save_bundle(models / "lab" / "mine", [build_model("efficientnet_tiny", 32)], [{"name": "fold1", "fold": 1}],
                kind="ensemble", arch="efficientnet_tiny", input_size=32,
                extra={"crop_geometry": {"mode": "tiles", "crop_edge_px": 64, "pixel_size_um": 0.65},
                       "training_plates": [{"name": "plate_01"}, {"name": "plate_02"}]})
    (models / "broken").mkdir(parents=True)
    (models / "broken" / "card.json").write_text("{not json")
    return app_env


def _model_table(at: AppTest):
    tables = [d.value for d in at.dataframe if "Architecture" in d.value.columns]
    assert len(tables) == 1
    return tables[0].set_index("Folder")


def test_installed_models_are_listed_with_their_cards_and_one_is_added_by_path(
        models_env: Path, tiny_models: Path, tiny_plate: Path, study: tuple[Path, Path]) -> None:
    _, study_bundle = study
    at = open_server_plate(tiny_plate, tiny_plate / "platemap.csv", timeout=300)
    table = _model_table(at)
    ensemble, single = str((tiny_models / "ensemble").resolve()), str((tiny_models / "single_channel").resolve())
    mine = str((models_env / "data" / "models" / "lab" / "mine").resolve())
    broken = str((models_env / "data" / "models" / "broken").resolve())
    assert sorted(table.index) == sorted([ensemble, single, mine, broken])
    assert table.loc[mine, "Crop geometry"] == "64 px tiles at 0.65 um/px"
    assert table.loc[mine, "Training plates"] == "2: plate_01, plate_02"
    assert table.loc[single, "Kind"] == "single_channel" and table.loc[ensemble, "Input (px)"] == 32
    assert "card.json cannot be read" in table.loc[broken, "Problem"]
    # only ensembles whose card reads can score; the configured ensemble comes first
    select = at.selectbox(key="model_path")
    assert sorted(select.options) == sorted(select.format_func(p) for p in (ensemble, mine))
    assert select.value == ensemble and select.format_func(ensemble).startswith("ensemble: efficientnet_tiny, 32 px")
    assert not at.checkbox(key="with_channels").disabled   # the tiny single-channel models share its crops

    at.text_input(key="add_bundle_path").set_value(str(models_env / "nowhere"))
    at.button(key="add_bundle").click().run()
    assert "That model cannot be used" in at.error[0].value and "nowhere" in at.error[0].value
    at.text_input(key="add_bundle_path").set_value(str(tiny_plate))
    at.button(key="add_bundle").click().run()
    assert "no card.json" in shown(at.error[0].value)

    at.text_input(key="add_bundle_path").set_value(str(study_bundle))
    at.button(key="add_bundle").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Added the model" in s.value for s in at.success)
    row = _model_table(at).loc[str(study_bundle.resolve())]
    assert row["Architecture"] == "efficientnet_pytorch_b0" and row["Crop geometry"] == "whole field (72 px input)"
    assert row["Well call"] == "plurality" and row["Training plates"] == "not recorded (imported)"
    assert row["Validation accuracy"] == "not on the card"
    assert row["Where it came from"].startswith("imported from efficientnet-b0 state_dicts "
                                                f"({fold_files(study[0])[0].name})")
    assert at.selectbox(key="model_path").value == str(study_bundle.resolve())
    assert at.checkbox(key="with_channels").disabled   # whole fields vs the tiny models' tiles


@pytest.mark.slow
def test_the_study_model_scores_its_npy_plate_from_the_page(models_env: Path, study: tuple[Path, Path]) -> None:
    folder, study_bundle = study
    at = open_server_plate(folder / "plate", folder / "plate" / "platemap.csv", timeout=300)
    at.text_input(key="add_bundle_path").set_value(str(study_bundle))
    at.button(key="add_bundle").click().run()
    at.text_input(key="plate_name").set_value("study plate").run()
    at.button(key="score").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Plate heatmap"
    run = resources.store().load_run(resources.store().latest_run_id("study plate"))
    assert run[MODEL_ID] == resources.bundle_at(study_bundle).id
    assert run["params"]["well_call"] == "plurality"
    wells = resources.store().load_well_scores("study plate").set_index(WELL)
    calls = reference_probs()[0].argmax(1)
    names = np.array([f["well"] for f in reference()["fields"]])
    expected = {w: int(np.bincount(calls[names == w], minlength=6).argmax()) for w in dict.fromkeys(names)}
    assert wells.loc[list(expected), CALLED_CLASS].tolist() == list(expected.values())
    # the Channels page re-scores with the run's own model, which was added by path, not installed
    with pytest.raises(NeuroRGError, match=f"used model {run[MODEL_ID]}, which is not installed"):
        flows.score_channels("study plate")
