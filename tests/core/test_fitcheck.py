"""The fit check's crop statistics against pandas' pivot table, which ``fit_stats`` used until it
was replaced for speed (issue #12), and ``scoring.CropProbs`` against the crop table it stands for."""

import numpy as np
import pandas as pd
import pytest

from neurorg_core.errors import NeuroRGError
from neurorg_core.fitcheck import fit_stats
from neurorg_core.scoring import CropProbs
from neurorg_core.schema import (
    CALLED_CLASS,
    CROP,
    FIELD,
    INFLAMMATION_SCORE,
    MEMBER,
    N_CLASSES,
    PROB_COLUMNS,
    ROLE,
    WELL,
)


def _crop_table(rng: np.random.Generator) -> pd.DataFrame:
    """3 wells x 2 fields x 4 crops x 3 members of random softmax rows."""
    rows = [{WELL: w, FIELD: f, CROP: c, MEMBER: m, **dict(zip(PROB_COLUMNS, rng.dirichlet(np.full(N_CLASSES, 0.7))))}
            for w in ("A01", "B03", "A02") for f in (2, 1) for c in range(4) for m in (3, 1, 2)]
    return pd.DataFrame(rows)


def _pivot(table: pd.DataFrame) -> np.ndarray:
    """The old way: pandas' pivot table, reshaped to (crops, classes, members)."""
    members = table.pivot_table(index=[WELL, FIELD, CROP], columns=MEMBER, values=list(PROB_COLUMNS),
                                aggfunc="first")
    return members.to_numpy(np.float64).reshape(len(members), len(PROB_COLUMNS), -1)


def _shuffled(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return table.sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)


def test_crop_probs_from_a_shuffled_table_equal_the_pivot_table() -> None:
    rng = np.random.default_rng(7)
    table = _crop_table(rng)
    for t in (table, _shuffled(table, rng)):
        crops = CropProbs.from_table(t)
        want = _pivot(t)   # (crops, classes, members), crops sorted by (well, field, crop), members ascending
        assert crops.members == (1, 2, 3)
        np.testing.assert_array_equal(crops.probs.transpose(1, 2, 0), want)
        assert list(crops.wells[:8]) == ["A01"] * 8 and list(crops.fields[:8]) == [1] * 4 + [2] * 4
        assert list(crops.crops[:4]) == [0, 1, 2, 3]


def test_crop_probs_from_arrays_sort_crops_and_members_like_the_table() -> None:
    rng = np.random.default_rng(5)
    table = _crop_table(rng)
    from_table = CropProbs.from_table(table)
    # the same crops, members given as 3, 1, 2 and crops in table order (not sorted)
    one = table[table[MEMBER] == 3]
    probs = np.stack([table[table[MEMBER] == m][list(PROB_COLUMNS)].to_numpy() for m in (3, 1, 2)])
    got = CropProbs.from_arrays(one[WELL].to_numpy(), one[FIELD].to_numpy(), one[CROP].to_numpy(), [3, 1, 2], probs)
    assert got.members == from_table.members
    for a, b in ((got.wells, from_table.wells), (got.fields, from_table.fields), (got.crops, from_table.crops),
                 (got.probs, from_table.probs)):
        np.testing.assert_array_equal(a, b)
    back = got.table().sort_values([WELL, FIELD, CROP, MEMBER]).reset_index(drop=True)
    want = table.sort_values([WELL, FIELD, CROP, MEMBER]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back[want.columns], want, check_dtype=False)


def test_crop_probs_from_arrays_refuse_a_broken_model_output_naming_the_well() -> None:
    rng = np.random.default_rng(3)
    one = _crop_table(rng)
    one = one[one[MEMBER] == 1]
    probs = one[list(PROB_COLUMNS)].to_numpy()[None].copy()
    probs[0, 5, :] = np.nan   # row 5: well A01, field 1, crop 1
    with pytest.raises(NeuroRGError, match="well A01: .*missing or outside"):
        CropProbs.from_arrays(one[WELL].to_numpy(), one[FIELD].to_numpy(), one[CROP].to_numpy(), [1], probs)
    with pytest.raises(NeuroRGError, match="expected \\(members, crops >= 1, 6\\)"):
        CropProbs.from_arrays(one[WELL].to_numpy(), one[FIELD].to_numpy(), one[CROP].to_numpy(), [1, 2], probs)


def test_fit_stats_crop_statistics_are_unchanged_by_the_numpy_path() -> None:
    rng = np.random.default_rng(11)
    table = _shuffled(_crop_table(rng), rng)
    wells = pd.DataFrame({WELL: ["A01", "A02", "B03"], ROLE: ["control", "disease", "treatment"],
                          CALLED_CLASS: [0, 4, 2], INFLAMMATION_SCORE: [0.2, 3.9, 2.1]})
    stats = fit_stats(wells, CropProbs.from_table(table), np.ones((6, 2, 3)))
    # the same statistics worked from the pivot table
    probs = _pivot(table)
    mean = probs.mean(axis=2)
    call, top = mean.argmax(axis=1), mean.max(axis=1)
    disagree = (probs.argmax(axis=1) != call[:, None]).mean(axis=1)
    assert stats.n_crops == 24
    for k in range(N_CLASSES):
        sel = call == k
        assert stats.crop_share_by_class[k] == float(sel.mean())
        if sel.any():
            np.testing.assert_equal(stats.confidence_by_class[k], float(top[sel].mean()))
            np.testing.assert_equal(stats.disagreement_by_class[k], float(disagree[sel].mean()))
        else:
            assert np.isnan(stats.confidence_by_class[k]) and np.isnan(stats.disagreement_by_class[k])
