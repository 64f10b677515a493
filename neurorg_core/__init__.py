"""NeuroRG Screen core library: ingestion, inference, scoring, statistics, result store.

No streamlit import anywhere in this package. Public verbs are re-exported here as they land.
"""

from neurorg_core.errors import NeuroRGError, PlateMapError
from neurorg_core.wells import format_well, normalize_well, parse_well

__all__ = ["NeuroRGError", "PlateMapError", "format_well", "normalize_well", "parse_well"]
