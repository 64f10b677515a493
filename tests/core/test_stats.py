import numpy as np
import pytest
from scipy import stats as sps

from neurorg_core.errors import NeuroRGError
from neurorg_core.stats import mcnemar


# --- McNemar ---------------------------------------------------------------------------------

def test_mcnemar_reproduces_the_paper():
    out = mcnemar(32, 1)
    assert out["b"] == 32 and out["c"] == 1
    assert out["chi2"] == pytest.approx(29.12, abs=0.005)
    assert out["p"] == pytest.approx(6.80e-8, rel=0.01)


def test_mcnemar_matches_chi2_by_hand_and_is_symmetric():
    out = mcnemar(10, 4)
    assert out["chi2"] == pytest.approx(36 / 14)
    assert out["p"] == pytest.approx(sps.chi2.sf(36 / 14, 1))
    assert mcnemar(4, 10)["chi2"] == pytest.approx(out["chi2"])
    assert mcnemar(5, 5)["p"] == pytest.approx(1.0)


def test_mcnemar_no_discordant_pairs_is_no_difference():
    assert mcnemar(0, 0) == {"chi2": 0.0, "p": 1.0, "b": 0, "c": 0}


@pytest.mark.parametrize("b,c", [(-1, 3), (2.5, 1)])
def test_mcnemar_rejects_bad_counts(b, c):
    with pytest.raises(NeuroRGError, match="discordant"):
        mcnemar(b, c)
