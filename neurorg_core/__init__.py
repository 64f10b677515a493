"""NeuroRG Screen core library: ingestion, inference, scoring, statistics, result store.

No streamlit import anywhere in this package. Public verbs are re-exported here as they land.
"""

from neurorg_core.errors import NeuroRGError, PlateMapError
from neurorg_core.plates import load_plate
from neurorg_core.pipeline import ScoreOptions, run_plate
from neurorg_core.results import export_table, load_plate_results
from neurorg_core.platemap import check_plate_map, load_plate_map
from neurorg_core.scoring import score_channels, score_wells
from neurorg_core.store import ResultStore
from neurorg_core.doseresponse import fit_compounds, fit_dose_response
from neurorg_core.stats import (
    add_rescue,
    channel_comparison,
    compare_treatments,
    mcnemar,
    plate_qc,
)
from neurorg_core.synth import write_synthetic_plates
from neurorg_core.wells import format_well, normalize_well, parse_well

__all__ = ["NeuroRGError", "PlateMapError", "check_plate_map", "load_plate", "load_plate_map", "format_well", "normalize_well", "parse_well",
           "score_wells", "score_channels", "add_rescue", "plate_qc", "compare_treatments", "fit_dose_response",
           "fit_compounds", "channel_comparison", "mcnemar", "write_synthetic_plates",
           "ResultStore", "run_plate", "ScoreOptions", "load_plate_results", "export_table"]
