"""Screening statistics over per-well tables.

Pure functions over numpy arrays and pandas DataFrames: rescue %, plate quality (Z', SSMD, CV,
edge effects), treatment-vs-disease tests with Benjamini-Hochberg q-values and hit calls,
4-parameter logistic dose-response fits (EC50 with a 95 % CI), Pearson correlation between
channel models, and McNemar's test for paired classifiers.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import stats as sps

from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)


# --- paired classifiers --------------------------------------------------------------------

def mcnemar(b: int, c: int) -> dict:
    """McNemar's test for two classifiers scored on the same items.

    Chi-square without continuity correction, 1 degree of freedom:
    chi2 = (b - c)^2 / (b + c). This is the form the study reports (32 vs 1 discordant pairs
    -> chi2 = 29.12, p = 6.80e-8).

    Parameters
    ----------
    b : int
        Items the first classifier got right and the second got wrong (count).
    c : int
        Items the first classifier got wrong and the second got right (count).

    Returns
    -------
    dict
        ``chi2`` (float), ``p`` (two-sided, float), ``b`` and ``c`` (ints). With no discordant
        pairs (b = c = 0) the two classifiers never disagree: chi2 is 0 and p is 1.

    Raises
    ------
    NeuroRGError
        If a count is negative or not a whole number.
    """
    counts = {}
    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or not float(value).is_integer() or value < 0:
            raise NeuroRGError(
                f"McNemar count {name} = {value!r}; expected a whole number of discordant pairs >= 0"
            )
        counts[name] = int(value)
    b_, c_ = counts["b"], counts["c"]
    if b_ + c_ == 0:
        log.info("McNemar: no discordant pairs; chi2 = 0, p = 1")
        return {"chi2": 0.0, "p": 1.0, "b": 0, "c": 0}
    chi2 = (b_ - c_) ** 2 / (b_ + c_)
    p = float(sps.chi2.sf(chi2, df=1))
    return {"chi2": float(chi2), "p": p, "b": b_, "c": c_}
