"""How hard is the synthetic assay? A hand-feature proxy for a CNN, per channel and all channels.

Renders four training plates in memory (4 fields of 256 px per well, each cut into 2 x 2 tiles of
128 px, 15 crops per well), computes per-crop features (`crop_features`: a basic set of mean, SD
and high-pass energy per channel, and an extended set with gain-tolerant and object features),
trains a logistic regression on plates 1-3 and tests on plate 4, on raw and on per-plate
z-scored features. Prints crop accuracy and well accuracy (plurality vote of the well's crops)
for each channel alone and all three. A CNN should do somewhat better than this proxy; the
microglia channel should carry the most signal, neurons some, nuclei about chance (1/6).

Run from the repo root: ``python -m benchmarks.synth_proxy [--seed 0] [--size 256] [--fields 4]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurorg_core.schema import CHANNELS, CLASS, CROPS_PER_WELL, ROLE, TRUE_SEVERITY, WELL
from neurorg_core.synth import build_plate_table, plate_effects_for, render_well


BASIC = 3
"""The first three features per channel (mean, SD, high-pass energy) form the basic set."""


def crop_features(crop: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, 14) features per channel.

    Basic: mean, SD, high-pass energy (RMS of image minus its Gaussian blur, sigma 2 px).
    Extended adds gain-tolerant and object features: SD / mean, high-pass / SD, bright range
    (99.5th - 50th percentile), foreground fraction (above half that range), and on a
    foreground mask at a quarter of the range: thick area (survives a 3 x 3 opening), thin area
    (processes, neurites), thin / foreground, mean thick-object area (px), their count, and the
    count of thin pieces (fragmentation).
    """
    x = crop.astype(np.float32) / 255.0
    feats = []
    for c in range(3):
        ch = x[:, :, c]
        hp = ch - ndimage.gaussian_filter(ch, 2.0)
        m, s, h = ch.mean(), ch.std(), np.sqrt((hp ** 2).mean())
        q50, q99 = np.percentile(ch, [50, 99.5])
        rng = q99 - q50 + 1e-3
        fg = (ch - q50) > 0.25 * rng
        thick = ndimage.binary_opening(fg, np.ones((3, 3), bool))
        thin = fg & ~thick
        labels, n_thick = ndimage.label(thick)
        areas = np.bincount(labels.ravel())[1:]
        big = areas[areas >= 8]
        n_thin = ndimage.label(thin)[1]
        feats.append([m, s, h, s / (m + 1e-3), h / (s + 1e-3), rng, ((ch - q50) > 0.5 * rng).mean(),
                      thick.mean(), thin.mean(), thin.sum() / (fg.sum() + 1), big.mean() if big.size else 0.0,
                      big.size, n_thin, n_thick])
    return np.asarray(feats)


def render_plate_features(seed: int, plate: int, n_fields: int, size: int) -> tuple[np.ndarray, ...]:
    table = build_plate_table(seed, plate, 96, "training")
    table = table[table[ROLE] != "empty"]
    effects = plate_effects_for(seed, plate)
    feats, labels, wells = [], [], []
    half = size // 2
    for well, sev, label in zip(table[WELL], table[TRUE_SEVERITY], table[CLASS]):
        fields = render_well(seed, plate, well, float(sev), n_fields, size, effects)
        tiles = [f[i:i + half, j:j + half] for f in fields for i in (0, half) for j in (0, half)]
        for t in tiles[:CROPS_PER_WELL]:
            feats.append(crop_features(t))
            labels.append(int(label))
            wells.append(f"{plate}:{well}")
    return np.asarray(feats), np.asarray(labels), np.asarray(wells)


def well_accuracy(pred: np.ndarray, labels: np.ndarray, wells: np.ndarray) -> float:
    right = []
    for w in np.unique(wells):
        m = wells == w
        right.append(np.bincount(pred[m], minlength=6).argmax() == labels[m][0])
    return float(np.mean(right))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--fields", type=int, default=4)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = [render_plate_features(args.seed, k, args.fields, args.size) for k in (1, 2, 3, 4)]
    print(f"rendered 4 plates in {time.perf_counter() - t0:.1f} s")
    y_tr = np.concatenate([d[1] for d in data[:3]])
    _, y_te, w_te = data[3]
    plate_of = np.concatenate([np.full(len(d[1]), k) for k, d in enumerate(data)])
    x_all = np.concatenate([d[0] for d in data])
    x_norm = x_all.copy()
    for k in range(len(data)):   # per-plate z-scores: a crude batch correction
        m = plate_of == k
        x_norm[m] = (x_all[m] - x_all[m].mean(0)) / (x_all[m].std(0) + 1e-9)
    for label, feats in (("raw", x_all), ("plate-normalised", x_norm)):
        for set_name, n_feat in (("basic", BASIC), ("extended", x_all.shape[2])):
            print(f"{set_name} features, {label}:")
            x_tr, x_te = feats[plate_of < 3, :, :n_feat], feats[plate_of == 3, :, :n_feat]
            for name, chans in [(c, [i]) for i, c in enumerate(CHANNELS)] + [("all", [0, 1, 2])]:
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.5))
                clf.fit(x_tr[:, chans].reshape(len(x_tr), -1), y_tr)
                pred = clf.predict(x_te[:, chans].reshape(len(x_te), -1))
                conf = np.zeros((6, 6), int)
                np.add.at(conf, (y_te, pred), 1)
                print(f"  {name:10s} crop accuracy {float((pred == y_te).mean()):.3f}  well accuracy "
                      f"{well_accuracy(pred, y_te, w_te):.3f}  per-class crop recall "
                      f"{np.round(conf.diagonal() / conf.sum(1), 2).tolist()}")


if __name__ == "__main__":
    main()
