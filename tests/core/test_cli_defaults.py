"""The CLI's defaults are the settings objects' (#12: `train --epochs` once defaulted to 8 while
`TrainSettings.epochs` said 10). Each sub-command's parsed defaults are compared with the object or
function it feeds, so a default changed in one place only fails here."""

from __future__ import annotations

import inspect

from neurorg_core.cli import build_parser
from neurorg_core.demo import DemoRecipe
from neurorg_core.plate_inference import ScoreOptions
from neurorg_core.synth import write_synthetic_plates
from neurorg_core.train import TrainSettings


def _defaults(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


def test_train_defaults_are_train_settings() -> None:
    got, st = _defaults("train", "--plates", "p", "--out", "o"), TrainSettings()
    assert (got["arch"], got["input_size"], got["crop_edge"], got["epochs"], got["seed"], got["batch_size"],
            got["lr"]) == (st.arch, st.input_size, st.crop_edge_px, st.epochs, st.seed, st.batch_size,
                           st.learning_rate)


def test_build_demo_defaults_are_the_demo_recipe() -> None:
    got, recipe = _defaults("build-demo"), DemoRecipe()
    assert (got["epochs"], got["single_channel_epochs"], got["cell_severity_sd"], got["well_severity_sd"],
            got["seed"]) == (recipe.ensemble_epochs, recipe.single_channel_epochs, recipe.cell_severity_sd,
                             recipe.well_severity_sd, TrainSettings().seed)


def test_score_defaults_are_score_options() -> None:
    """Readout and backend default to None: the CLI then takes ``Config.readout`` / ``Config.backend``."""
    options = ScoreOptions()
    for argv in (("score", "plate", "--plate-map", "map.csv"), ("score-campaign", "plate")):
        got = _defaults(*argv)
        assert (got["crops_per_well"], got["precision"]) == (options.crops_per_well, options.precision)
        assert got["readout"] is None and got["backend"] is None and got["pixel_size"] is None
        assert got["bit_depth"] is None


def test_synth_defaults_are_write_synthetic_plates_defaults() -> None:
    got = _defaults("synth", "--out", "o")
    params = {k: p.default for k, p in inspect.signature(write_synthetic_plates).parameters.items()}
    cli = {"n_plates": "plates", "n_wells": "wells", "n_fields": "fields", "size": "size", "layout": "layout",
           "kind": "kind", "bit_depth": "bit_depth", "n_workers": "workers", "magnification": "magnification"}
    assert {k: got[v] for k, v in cli.items()} == {k: params[k] for k in cli}

