"""The fit check's crop statistics: the numpy crop-by-member array against pandas' pivot table, which
``fit_stats`` used until it was replaced for speed (issue #12)."""

import numpy as np
import pandas as pd

from neurorg_core.fitcheck import _crops_by_member, fit_stats
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


def _awkward(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Shuffled, one crop lacking a member, one (crop, member) row repeated later with other values."""
    lacking = (table[WELL] == "B03") & (table[FIELD] == 1) & (table[CROP] == 2) & (table[MEMBER] == 2)
    repeat = table[(table[WELL] == "A02") & (table[FIELD] == 2) & (table[CROP] == 0) & (table[MEMBER] == 3)].copy()
    repeat[list(PROB_COLUMNS)] = np.eye(N_CLASSES)[[5]]
    shuffled = table[~lacking].sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
    return pd.concat([shuffled, repeat], ignore_index=True)


def test_crops_by_member_equals_the_pivot_table_on_a_shuffled_table_with_a_missing_member() -> None:
    rng = np.random.default_rng(7)
    table = _crop_table(rng)
    awkward = _awkward(table, rng)
    for t in (table, awkward):
        got, want = _crops_by_member(t), _pivot(t)
        assert got.shape == want.shape == (24, N_CLASSES, 3)
        np.testing.assert_array_equal(got, want)   # NaN in the same places, every value bit-identical
    got = _crops_by_member(awkward)
    assert np.isnan(got).sum() == N_CLASSES          # the crop lacking member 2, every class
    first = table[(table[WELL] == "A02") & (table[FIELD] == 2) & (table[CROP] == 0) & (table[MEMBER] == 3)]
    row = 8 + 4 + 0   # sorted: A01 (8 crops) < A02 < B03; in A02, field 2 after field 1's 4 crops
    np.testing.assert_array_equal(got[row, :, 2], first[list(PROB_COLUMNS)].to_numpy()[0])   # not the repeat


def test_fit_stats_crop_statistics_are_unchanged_by_the_numpy_path() -> None:
    rng = np.random.default_rng(11)
    table = _awkward(_crop_table(rng), rng)
    wells = pd.DataFrame({WELL: ["A01", "A02", "B03"], ROLE: ["control", "disease", "treatment"],
                          CALLED_CLASS: [0, 4, 2], INFLAMMATION_SCORE: [0.2, 3.9, 2.1]})
    stats = fit_stats(wells, table, np.ones((6, 2, 3)))
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
