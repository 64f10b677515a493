"""The synthetic neuroinflammation assay: rendered plates with known ground truth.

Size (~870 lines): the simulation's cell rendering, the plate design and ground truth are one model
of the assay; the file layouts it writes are the layouts' own specs (``layouts/``).

This is a *simulation*, not microscopy. It imitates the NeuroRG co-culture assay closely enough to
exercise the readers, the model, the scoring and the statistics the way real plates would:

* three channels (nucleus, neuron, microglia). Nuclei are blobs and carry no stimulus signal;
  neurons have somata with branching neurites that shorten and fragment as severity rises
  (moderate signal); microglia are ramified at rest and turn amoeboid (larger, rounder, brighter,
  fewer and shorter processes) as severity rises (the strongest signal);
* severity follows the six stimulus concentrations on a log scale (`severity_for_concentration`);
* every plate draws its own batch effects (gain, offset, blur, vignetting, noise, cell density);
* screening plates carry compounds with a known EC50, Hill slope and maximal rescue, one inactive;
* `ground_truth.csv` beside the images records class, severity, compound, dose and true rescue.

Object sizes are in pixels at native scale (like a fixed microscope objective) and do not scale
with the field size. Everything is deterministic for a given seed: each plate and each well gets
its own ``np.random.SeedSequence`` keyed by (seed, plate, well), so results never depend on the
order in which wells are rendered.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    CLASS,
    COMPOUND,
    CONCENTRATIONS_UM,
    CONTROL_CLASS,
    DISEASE_CLASS,
    DOSE,
    N_CLASSES,
    PLATE,
    ROLE,
    TRUE_EC50,
    TRUE_HILL,
    TRUE_MAX_RESCUE,
    TRUE_RESCUE,
    TRUE_SEVERITY,
    TRUE_STIMULUS,
    WELL,
)
from neurorg_core.layouts import LayoutSpec, WriteTarget, builtin_layout, layout_names, layout_spec
from neurorg_core.wells import format_well, parse_well

log = logging.getLogger(__name__)

PlateKind = Literal["training", "screen"]
PLATE_KINDS = ("training", "screen")
STIMULUS = "stimulus"
"""Compound name used on training plates for the stimulus itself (classes 1-4)."""

SYNTH_PIXEL_SIZE_UM = 0.65
"""µm per pixel of the synthetic assay at magnification 1 (a 6.5 µm camera pixel behind a 10x
objective); every length in ``SynthParams`` is in pixels at this scale. Writers record
``SYNTH_PIXEL_SIZE_UM / magnification`` in the files' metadata."""
BIT_DEPTHS = (8, 12, 16)
"""Bit depths ``write_synthetic_plates`` writes: 8-bit, 12-bit camera data in 16-bit files
(round(v * 4095 / 255)), or the full 16-bit range (v * 257)."""

_PLATE_STREAM = 0   # spawn-key slot for plate-level draws (batch effects, layout)
_WELL_STREAM = 1    # spawn-key slot for well-level draws (cells)
_SEV_MARGIN = 0.3   # cell severities may stray this far outside 0..1 (morphology extrapolates)


# --- knobs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Compound:
    """A screening compound given on top of the disease-level stimulus.

    Attributes
    ----------
    name : str
    ec50_um : float
        Dose of half-maximal rescue, uM.
    hill : float
        Hill slope of the rescue curve (unitless, > 0).
    max_rescue : float
        Fraction 0..1 of the disease phenotype undone at saturating dose (0 = inactive).
    """

    name: str
    ec50_um: float
    hill: float
    max_rescue: float


DEFAULT_COMPOUNDS: tuple[Compound, ...] = (
    Compound("CPD-001", ec50_um=0.1, hill=1.0, max_rescue=0.9),
    Compound("CPD-002", ec50_um=1.0, hill=1.5, max_rescue=0.7),
    Compound("CPD-003", ec50_um=0.03, hill=0.8, max_rescue=1.0),
    Compound("CPD-004", ec50_um=1.0, hill=1.0, max_rescue=0.0),   # inactive
)


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the synthetic assay, with documented defaults.

    Lengths are pixels at native scale, intensities are fractions of full scale (0..1) before the
    plate's gain and offset, severities are unitless (0 = control, 1 = 20 uM stimulus).
    ``*_rest`` values hold at severity 0 and ``*_active`` at severity 1, linear in between (cells
    whose own severity strays outside 0..1 extrapolate up to 0.3 beyond). The defaults put about
    five neurons and five microglia in a 128 x 128 px tile; a resting microglia spans about
    25-30 px with its processes, an amoeboid one 15-20 px. Difficulty is set mostly by
    ``cell_severity_sd`` (larger = harder per crop), ``severity_c0_um`` (the class spacing) and
    the batch-effect magnitudes (larger = harder across plates).
    """

    # severity and its spread
    severity_c0_um: float = 0.002
    """Reference concentration of the log severity scale, uM (see `severity_for_concentration`)."""
    well_severity_sd: float = 0.03
    """SD of a well's severity around its nominal value (well-to-well biological spread)."""
    cell_severity_sd: float = 0.12
    """SD of each cell's severity around its well's severity (cell-to-cell spread)."""
    # cell density (cells per 10,000 px^2, i.e. per 100 x 100 px)
    neurons_per_10k_px2: float = 3.0
    microglia_per_10k_px2: float = 3.0
    # nuclei (one per cell, no severity dependence)
    nucleus_radius_px: float = 4.0
    nucleus_radius_sd_px: float = 0.6
    nucleus_intensity: float = 0.65
    # neurons
    neuron_soma_radius_px: float = 5.0
    """Soma radius at rest (shrinks by 10 % at severity 1)."""
    neuron_intensity: float = 0.6
    neurite_count_rest: float = 4.0
    """Mean primary neurites per neuron (Poisson)."""
    neurite_count_active: float = 3.0
    neurite_length_rest_px: float = 42.0
    """Mean primary neurite length (each drawn 0.6-1.3 x this)."""
    neurite_length_active_px: float = 22.0
    neurite_branches_rest: float = 1.5
    """Mean secondary branches per primary neurite at rest."""
    neurite_branches_active: float = 0.3
    neurite_fragmentation_active: float = 0.4
    """Fraction of neurite segments lost at severity 1 (0 at rest)."""
    neurite_width_sigma_px: float = 0.9
    """Gaussian profile of a neurite (FWHM = 2.35 sigma = 2.1 px)."""
    neurite_intensity: float = 0.45
    # microglia
    microglia_radius_rest_px: float = 4.5
    """Mean soma radius (geometric mean of the semi-axes) at rest."""
    microglia_radius_active_px: float = 9.0
    microglia_aspect_rest: float = 1.7
    """Soma elongation (long / short axis) at rest; amoeboid cells are round."""
    microglia_aspect_active: float = 1.05
    microglia_intensity_rest: float = 0.45
    microglia_intensity_active: float = 0.85
    process_count_rest: float = 5.0
    """Mean primary processes per microglia (Poisson)."""
    process_count_active: float = 1.0
    process_length_rest_px: float = 13.0
    process_length_active_px: float = 4.0
    process_branches_rest: float = 1.0
    """Mean secondary branches per process at rest (none at severity 1)."""
    process_width_sigma_px: float = 0.75
    """Gaussian profile of a process (FWHM 1.8 px)."""
    process_intensity: float = 0.4
    # plate batch effects (drawn per plate from the seed)
    gain_sd: float = 0.08
    """SD of log gain per channel and plate."""
    offset_max: float = 0.04
    """Largest background offset per channel (uniform 0..offset_max)."""
    blur_sigma_range: tuple[float, float] = (0.0, 1.0)
    """Optical blur (Gaussian sigma, px) drawn uniformly per plate."""
    vignette_max: float = 0.35
    """Largest relative intensity drop at 0.71 field widths from the illumination centre
    (uniform 0..vignette_max per plate; quadratic in the distance)."""
    noise_sd_range: tuple[float, float] = (0.01, 0.035)
    """Additive camera noise SD drawn uniformly per plate."""
    density_sd: float = 0.12
    """SD of the log cell-density factor per plate."""
    well_gain_sd: float = 0.05
    """SD of log gain per well (pipetting / staining spread within a plate)."""
    # treatment
    compounds: tuple[Compound, ...] = DEFAULT_COMPOUNDS
    n_doses: int = 6
    dose_step_log10: float = 0.5
    """Dose series step (0.5 = half-log), centred on each compound's EC50."""
    replicates: int = 3
    """Wells per compound dose on a 96-well screen (x 4 on 384). Three, not two: with duplicates
    Welch's t against the disease wells has about one degree of freedom, and no dose of even a
    full rescuer survives the FDR correction."""

    def at_magnification(self, magnification: float) -> SynthParams:
        """The same cells imaged at ``magnification`` x the native scale: every length in pixels
        (``*_px``) multiplied, every density per pixel area divided by its square. (The plate's
        blur is scaled where a field is rendered, ``render_field``.)"""
        m = float(magnification)
        if not (math.isfinite(m) and 0.25 <= m <= 8):
            raise NeuroRGError(f"magnification {magnification!r}; expected a number from 0.25 to 8")
        if m == 1.0:
            return self
        changes: dict[str, object] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_per_10k_px2"):
                changes[f.name] = v / (m * m)
            elif f.name.endswith("_px"):
                changes[f.name] = v * m
        return replace(self, **changes)


DEFAULT_PARAMS = SynthParams()


@dataclass(frozen=True)
class PlateEffects:
    """One plate's batch effects.

    Attributes
    ----------
    gain : tuple of 3 floats
        Multiplicative gain per channel (CHANNELS order).
    offset : tuple of 3 floats
        Additive background per channel, fraction of full scale.
    blur_sigma : float
        Optical blur, Gaussian sigma in pixels.
    vignette : float
        Relative intensity drop at the field corners (0 = flat illumination).
    vignette_center : tuple of 2 floats
        Illumination centre as a fraction of (height, width).
    noise_sd : float
        Additive noise SD, fraction of full scale.
    density : float
        Cell-density factor (1 = nominal).
    """

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.02, 0.02, 0.02)
    blur_sigma: float = 0.0
    vignette: float = 0.0
    vignette_center: tuple[float, float] = (0.5, 0.5)
    noise_sd: float = 0.01
    density: float = 1.0


def draw_plate_effects(rng: np.random.Generator, params: SynthParams = DEFAULT_PARAMS) -> PlateEffects:
    """Draw one plate's batch effects from ``rng`` using the magnitudes in ``params``."""
    gain = tuple(float(g) for g in np.exp(rng.normal(0.0, params.gain_sd, 3)))
    offset = tuple(float(o) for o in rng.uniform(0.0, params.offset_max, 3))
    return PlateEffects(
        gain=gain,  # type: ignore[arg-type]
        offset=offset,  # type: ignore[arg-type]
        blur_sigma=float(rng.uniform(*params.blur_sigma_range)),
        vignette=float(rng.uniform(0.0, params.vignette_max)),
        vignette_center=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
        noise_sd=float(rng.uniform(*params.noise_sd_range)),
        density=float(np.exp(rng.normal(0.0, params.density_sd))),
    )


# --- dose -> severity -----------------------------------------------------------------------------

def severity_for_concentration(conc_um: float | np.ndarray, c0_um: float = DEFAULT_PARAMS.severity_c0_um,
                               ) -> float | np.ndarray:
    """Stimulus concentration (uM) -> phenotype severity on a log scale.

    ``s(c) = log10(1 + c / c0) / log10(1 + 20 / c0)``; with the default ``c0 = 0.002`` uM the six
    classes sit at 0, 0.14, 0.35, 0.60, 0.85 and 1.0 (``c0 = 0.005`` gives 0, 0.08, 0.29, 0.56,
    0.83, 1.0, a harder class 0 vs 1).
    """
    hi = CONCENTRATIONS_UM[-1]
    return np.log10(1.0 + np.asarray(conc_um, dtype=float) / c0_um) / math.log10(1.0 + hi / c0_um)


def class_severity(params: SynthParams = DEFAULT_PARAMS) -> tuple[float, ...]:
    """Nominal severity of each class label (index = class)."""
    return tuple(float(severity_for_concentration(c, params.severity_c0_um)) for c in CONCENTRATIONS_UM)


CLASS_SEVERITY: tuple[float, ...] = class_severity(DEFAULT_PARAMS)
"""Nominal severity of each class label with the default parameters."""


def rescue_fraction(dose_um: float | np.ndarray, compound: Compound) -> float | np.ndarray:
    """Fraction of the disease phenotype a compound undoes at ``dose_um`` (uM).

    ``rescue(d) = max_rescue * d^h / (d^h + EC50^h)``.
    """
    d = np.asarray(dose_um, dtype=float)
    dh = np.power(d, compound.hill)
    return compound.max_rescue * dh / (dh + compound.ec50_um ** compound.hill)


def dose_series(compound: Compound, params: SynthParams = DEFAULT_PARAMS) -> np.ndarray:
    """The compound's doses (uM): ``n_doses`` steps of ``dose_step_log10`` centred on the EC50."""
    k = np.arange(params.n_doses) - (params.n_doses - 1) / 2.0
    return compound.ec50_um * 10.0 ** (k * params.dose_step_log10)


# --- rendering ------------------------------------------------------------------------------------

def _stamp_ellipses(canvas: np.ndarray, cy: np.ndarray, cx: np.ndarray, ry: np.ndarray,
                    rx: np.ndarray, theta: np.ndarray, amp: np.ndarray, edge_px: float = 1.0) -> None:
    """Add soft-edged filled ellipses to ``canvas`` in place (a linear edge ``edge_px`` pixels wide:
    one native pixel, so ``magnification`` pixels at magnification > 1)."""
    h, w = canvas.shape
    for y0, x0, a, b, t, v in zip(*(np.asarray(z, float).tolist() for z in (cy, cx, ry, rx, theta, amp))):
        r = int(math.ceil(max(a, b))) + 2
        yi0, yi1 = max(int(y0) - r, 0), min(int(y0) + r + 1, h)
        xi0, xi1 = max(int(x0) - r, 0), min(int(x0) + r + 1, w)
        if yi0 >= yi1 or xi0 >= xi1:
            continue
        dy = (np.arange(yi0, yi1) - y0).astype(np.float32)[:, None]
        dx = (np.arange(xi0, xi1) - x0).astype(np.float32)[None, :]
        c, s = math.cos(t), math.sin(t)
        u, q = (dx * c + dy * s) / b, (dy * c - dx * s) / a
        d = np.sqrt(u * u + q * q)
        mean_r = 0.5 * (a + b)
        edge = (1.0 - d) * mean_r / edge_px + 0.5
        np.minimum(edge, 1.0, out=edge)
        np.maximum(edge, 0.0, out=edge)
        canvas[yi0:yi1, xi0:xi1] += v * edge


def _walk(rng: np.random.Generator, y0: np.ndarray, x0: np.ndarray, angle: np.ndarray,
          length: np.ndarray, tortuosity: float, magnification: float = 1.0,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random walks of unit step, one per start; returns (y, x, valid) of shape (n, max_len).

    A walk of ``length`` px takes whole native pixels: ``ceil(length / magnification)`` of them,
    ``magnification`` steps each (at magnification 1, ``ceil(length)`` steps), so a path covers
    the same micrometres at any magnification.
    """
    n = len(y0)
    if magnification != 1.0:
        length = np.ceil(length / magnification) * magnification
    max_len = int(np.ceil(length.max())) if n else 0
    if n == 0 or max_len == 0:
        empty = np.zeros((n, 0))
        return empty, empty, empty.astype(bool)
    turns = rng.normal(0.0, tortuosity, (n, max_len))
    ang = angle[:, None] + np.cumsum(turns, axis=1)
    y = y0[:, None] + np.cumsum(np.sin(ang), axis=1)
    x = x0[:, None] + np.cumsum(np.cos(ang), axis=1)
    valid = np.arange(max_len)[None, :] < length[:, None]
    return y, x, valid


def _tree(rng: np.random.Generator, cy: np.ndarray, cx: np.ndarray, soma_r: np.ndarray,
          n_primary: np.ndarray, length: np.ndarray, branches: np.ndarray, tortuosity: float,
          magnification: float = 1.0,
          ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Branching processes from each soma.

    Returns the per-generation point arrays (y, x, valid) and, for each point row, the owning cell.
    Primary processes start at the soma edge; each primary spawns Poisson(``branches``) secondary
    branches at random points along its length, half as long, at +-(30..70) degrees.
    """
    owner = np.repeat(np.arange(len(cy)), n_primary)
    ang = rng.uniform(0.0, 2 * np.pi, len(owner))
    lens = length[owner] * rng.uniform(0.6, 1.3, len(owner))
    y0 = cy[owner] + soma_r[owner] * 0.8 * np.sin(ang)
    x0 = cx[owner] + soma_r[owner] * 0.8 * np.cos(ang)
    y1, x1, v1 = _walk(rng, y0, x0, ang, lens, tortuosity, magnification)
    n_sec = rng.poisson(branches[owner]) if len(owner) else np.zeros(0, int)
    parent = np.repeat(np.arange(len(owner)), n_sec)
    if len(parent):
        at = (rng.uniform(0.2, 0.8, len(parent)) * lens[parent]).astype(int)
        at = np.minimum(at, y1.shape[1] - 1)
        side = rng.choice([-1.0, 1.0], len(parent))
        # direction of the parent at the branch point
        prev = np.maximum(at - 1, 0)
        pdir = np.arctan2(y1[parent, at] - y1[parent, prev], x1[parent, at] - x1[parent, prev])
        ang2 = pdir + side * rng.uniform(np.pi / 6, 7 * np.pi / 18, len(parent))
        lens2 = (lens[parent] - at) * rng.uniform(0.3, 0.7, len(parent))
        y2, x2, v2 = _walk(rng, y1[parent, at], x1[parent, at], ang2, np.maximum(lens2, 1.0), tortuosity,
                           magnification)
    else:
        y2 = x2 = np.zeros((0, 0))
        v2 = np.zeros((0, 0), bool)
    return [y1, y2], [x1, x2], [v1, v2], np.concatenate([owner, owner[parent]])


def _splat(canvas: np.ndarray, y: np.ndarray, x: np.ndarray, amp: np.ndarray) -> None:
    """Accumulate points (bilinear) onto ``canvas`` in place; points outside are dropped."""
    h, w = canvas.shape
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        np.add.at(canvas, (yy[ok], xx[ok]), (amp * wgt)[ok])


def _lerp(rest: float, active: float, s: np.ndarray) -> np.ndarray:
    return rest + (active - rest) * s


def render_field(rng: np.random.Generator, severity: float, plate_effects: PlateEffects | None = None,
                 size: int = 256, params: SynthParams = DEFAULT_PARAMS, well_gain: float = 1.0,
                 magnification: float = 1.0) -> np.ndarray:
    """Render one field of view.

    Parameters
    ----------
    rng : numpy Generator
        Source of all randomness for this field.
    severity : float
        The well's phenotype severity (0 = control, 1 = 20 uM stimulus); each cell varies around
        it by ``params.cell_severity_sd``.
    plate_effects : PlateEffects, optional
        The plate's batch effects; ``None`` means the neutral ``PlateEffects()``.
    size : int
        Field edge in pixels (object sizes do not scale with it).
    params : SynthParams
    well_gain : float
        Extra multiplicative gain of this well (all channels).
    magnification : float
        Objective magnification relative to the native scale (pixel size
        ``SYNTH_PIXEL_SIZE_UM / magnification``): cells, processes and the plate's blur are that
        many times larger in pixels, and there are that many squared fewer per pixel area. Every
        length the renderer itself sets in pixels scales too (the cells' soft edges, the nucleus's
        offset in its cell, neurite fragments, paths rounded to whole native pixels, the smallest
        nucleus and process), so a field at magnification m, averaged over m x m blocks, shows the
        cells of the native render (each cell's light and path length alike,
        tests/core/test_synth.py; channel means over 18 wells within about 1 %, the cells' random
        shapes aside). Camera noise stays per pixel (so the averaged field is less noisy).

    Returns
    -------
    np.ndarray
        (size, size, 3) uint8, channels in ``schema.CHANNELS`` order (nucleus, neuron, microglia).
    """
    if size < 8:
        raise NeuroRGError(f"field size {size} px is too small; expected at least 8 px")
    fx = plate_effects if plate_effects is not None else PlateEffects()
    p = params.at_magnification(magnification)
    mag = float(magnification)
    pad = int(math.ceil(32 * mag))
    walk = 1.0 / math.sqrt(mag)  # turning per unit step, so paths bend alike per micrometre
    full = size + 2 * pad
    area = full * full / 1e4 * fx.density
    nuc = np.zeros((full, full), np.float32)
    neu = np.zeros((full, full), np.float32)
    mg = np.zeros((full, full), np.float32)
    neu_skel = np.zeros((full, full), np.float32)
    mg_skel = np.zeros((full, full), np.float32)

    # --- cell placement and nuclei first: they do not depend on severity, so a given rng state
    # places the same cells whatever the severity
    n_n = int(rng.poisson(p.neurons_per_10k_px2 * area))
    ny, nx = rng.uniform(0, full, n_n), rng.uniform(0, full, n_n)
    n_m = int(rng.poisson(p.microglia_per_10k_px2 * area))
    my, mx = rng.uniform(0, full, n_m), rng.uniform(0, full, n_m)
    n_all = n_n + n_m
    cy = np.concatenate([ny, my]) + rng.normal(0, mag, n_all)   # nucleus off its cell's centre by ~1 native px
    cx = np.concatenate([nx, mx]) + rng.normal(0, mag, n_all)
    nr = np.clip(rng.normal(p.nucleus_radius_px, p.nucleus_radius_sd_px, n_all), 2.0 * mag, None)
    _stamp_ellipses(nuc, cy, cx, nr, nr * rng.uniform(1.0, 1.3, n_all),
                    rng.uniform(0, np.pi, n_all), p.nucleus_intensity * rng.uniform(0.8, 1.2, n_all), mag)
    cell_noise = rng.normal(0.0, p.cell_severity_sd, n_all)
    # morphology draws come from a child generator, so the caller's rng advances by the same
    # amount whatever the severity (successive fields of a well then hold the same cells per class)
    morph = np.random.default_rng(rng.integers(0, 2**63))

    # --- neurons
    ns = np.clip(severity + cell_noise[:n_n], -_SEV_MARGIN, 1.0 + _SEV_MARGIN)
    n_soma = p.neuron_soma_radius_px * morph.uniform(0.85, 1.15, n_n) * _lerp(1.0, 0.9, ns)
    n_prim = morph.poisson(_lerp(p.neurite_count_rest, p.neurite_count_active, ns))
    n_len = _lerp(p.neurite_length_rest_px, p.neurite_length_active_px, ns)
    n_br = np.clip(_lerp(p.neurite_branches_rest, p.neurite_branches_active, ns), 0, None)
    ys, xs, vs, owner = _tree(morph, ny, nx, n_soma, n_prim, n_len, n_br, tortuosity=0.12 * walk,
                              magnification=mag)
    row0 = 0
    for y, x, v in zip(ys, xs, vs):
        if y.size == 0:
            continue
        rows_owner = owner[row0:row0 + len(y)]
        row0 += len(y)
        # fragmentation: segments of 4..8 native px are dropped with a probability rising with severity
        seg_len = morph.integers(4, 9, len(y))[:, None]
        if mag != 1.0:
            seg_len = np.maximum(np.rint(seg_len * mag), 1).astype(np.int64)
        seg = np.arange(y.shape[1])[None, :] // seg_len
        p_drop = np.clip(p.neurite_fragmentation_active * ns[rows_owner], 0.0, 0.95)
        keep = morph.random((len(y), seg.max() + 1)) >= p_drop[:, None]
        keep_pts = np.take_along_axis(keep, seg, axis=1)
        amp = p.neurite_intensity * morph.uniform(0.7, 1.3, y.shape)
        m = v & keep_pts
        _splat(neu_skel, y[m], x[m], amp[m])
    _stamp_ellipses(neu, ny, nx, n_soma, n_soma * morph.uniform(1.0, 1.3, n_n),
                    morph.uniform(0, np.pi, n_n), p.neuron_intensity * morph.uniform(0.8, 1.2, n_n), mag)

    # --- microglia
    ms = np.clip(severity + cell_noise[n_n:], -_SEV_MARGIN, 1.0 + _SEV_MARGIN)
    m_r = _lerp(p.microglia_radius_rest_px, p.microglia_radius_active_px, ms) * morph.uniform(0.85, 1.15, n_m)
    m_aspect = _lerp(p.microglia_aspect_rest, p.microglia_aspect_active, ms) * morph.uniform(0.9, 1.1, n_m)
    m_aspect = np.maximum(m_aspect, 1.0)
    m_int = (_lerp(p.microglia_intensity_rest, p.microglia_intensity_active, ms)
             * morph.uniform(0.85, 1.15, n_m))
    ry, rx = m_r * np.sqrt(m_aspect), m_r / np.sqrt(m_aspect)
    _stamp_ellipses(mg, my, mx, rx, ry, morph.uniform(0, np.pi, n_m), m_int, mag)
    m_prim = morph.poisson(np.clip(_lerp(p.process_count_rest, p.process_count_active, ms), 0, None))
    m_len = np.clip(_lerp(p.process_length_rest_px, p.process_length_active_px, ms), 2.0 * mag, None)
    m_br = np.clip(_lerp(p.process_branches_rest, 0.0, ms), 0, None)
    ys, xs, vs, owner = _tree(morph, my, mx, np.minimum(rx, ry), m_prim, m_len, m_br,
                              tortuosity=0.25 * walk, magnification=mag)
    for y, x, v in zip(ys, xs, vs):
        if y.size:
            amp = p.process_intensity * morph.uniform(0.7, 1.3, y.shape)
            _splat(mg_skel, y[v], x[v], amp[v])

    sig_n, sig_m = p.neurite_width_sigma_px, p.process_width_sigma_px
    neu += ndimage.gaussian_filter(neu_skel, sig_n) * np.float32(math.sqrt(2 * math.pi) * sig_n)
    mg += ndimage.gaussian_filter(mg_skel, sig_m) * np.float32(math.sqrt(2 * math.pi) * sig_m)

    # --- optics and camera
    stack = np.stack([nuc, neu, mg])[:, pad:pad + size, pad:pad + size]
    blur = fx.blur_sigma * mag
    if blur > 0.05 * mag:
        stack = ndimage.gaussian_filter(stack, (0, blur, blur))
    yy, xx = np.ogrid[0:size, 0:size]
    r2 = ((yy / size - fx.vignette_center[0]) ** 2 + (xx / size - fx.vignette_center[1]) ** 2) / 0.5
    illum = (1.0 - fx.vignette * r2).astype(np.float32)
    gain = np.asarray(fx.gain, np.float32)[:, None, None] * np.float32(well_gain)
    offset = np.asarray(fx.offset, np.float32)[:, None, None]
    img = stack * gain * illum + offset
    img += morph.standard_normal(img.shape, dtype=np.float32) * np.float32(fx.noise_sd)
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


# --- plate layouts --------------------------------------------------------------------------------

def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def _to_384(r: int, c: int, q: int) -> tuple[int, int]:
    """96-well (row, col) and quadrant 0..3 -> 384-well (row, col)."""
    return 2 * (r - 1) + 1 + q // 2, 2 * (c - 1) + 1 + q % 2


def _training_layout(rng: np.random.Generator, n_wells: int, params: SynthParams) -> list[dict]:
    """60 inner wells of a 96-well plate (B02..G11), 10 per class, positions shuffled.

    A 384-well plate uses the same inner block scaled 2 x 2 (rows C..N, columns 03..22): 240 wells,
    40 per class.
    """
    inner = [(r, c) for r in range(2, 8) for c in range(2, 12)]
    if n_wells == 384:
        inner = [(r, c) for r in range(3, 15) for c in range(3, 23)]
    labels = np.repeat(np.arange(N_CLASSES), len(inner) // N_CLASSES)
    labels = rng.permutation(labels)
    sev = class_severity(params)
    rows = []
    for (r, c), k in zip(inner, labels):
        k = int(k)
        conc = CONCENTRATIONS_UM[k]
        if k == CONTROL_CLASS:
            role, compound, dose = "control", "", np.nan
        elif k == DISEASE_CLASS:
            role, compound, dose = "disease", "", np.nan
        else:
            role, compound, dose = "treatment", STIMULUS, conc
        rows.append({"row": r, "col": c, ROLE: role, COMPOUND: compound, DOSE: dose, CLASS: k,
                     TRUE_STIMULUS: conc, TRUE_SEVERITY: sev[k], TRUE_RESCUE: np.nan,
                     TRUE_EC50: np.nan, TRUE_HILL: np.nan, TRUE_MAX_RESCUE: np.nan})
    return rows


def _screen_layout(n_wells: int, params: SynthParams) -> list[dict]:
    """Controls, disease wells and compound dose series on one plate.

    96-well: control = column 02 (A..H, 8 wells), disease = column 11 (8 wells), empty = column 12;
    compound i occupies rows 2i+1 and 2i+2 of columns 01, 03..10 (18 wells), filled in reading
    order with ``replicates`` wells per dose, doses ascending (defaults: 6 doses x 3 replicates).
    A 384-well plate repeats each 96-well position in a 2 x 2 block (4 x the replicates).
    """
    slots = [(r, c) for r in (0, 1) for c in (1, *range(3, 11))]
    if len(params.compounds) * 2 > 8 or params.n_doses * params.replicates > len(slots) \
            or params.replicates < 1:
        raise NeuroRGError(
            f"a 96-well screening plate holds at most 4 compounds, each with doses x replicates <= "
            f"{len(slots)}; got {len(params.compounds)} compounds x {params.n_doses} doses x "
            f"{params.replicates} replicates"
        )
    sev = class_severity(params)
    disease_sev = sev[DISEASE_CLASS]
    top = CONCENTRATIONS_UM[DISEASE_CLASS]
    base: dict[tuple[int, int], dict] = {}
    for r in range(1, 9):
        for c in range(1, 13):
            base[(r, c)] = {ROLE: "empty", COMPOUND: "", DOSE: np.nan, CLASS: pd.NA,
                            TRUE_STIMULUS: np.nan, TRUE_SEVERITY: np.nan, TRUE_RESCUE: np.nan,
                            TRUE_EC50: np.nan, TRUE_HILL: np.nan, TRUE_MAX_RESCUE: np.nan}
    control = [(r, 2) for r in range(1, 9)]
    disease = [(r, 11) for r in range(1, 9)]
    for rc in control:
        base[rc].update({ROLE: "control", CLASS: CONTROL_CLASS, TRUE_STIMULUS: 0.0,
                         TRUE_SEVERITY: sev[CONTROL_CLASS], TRUE_RESCUE: 1.0})
    for rc in disease:
        base[rc].update({ROLE: "disease", CLASS: DISEASE_CLASS, TRUE_STIMULUS: top,
                         TRUE_SEVERITY: disease_sev, TRUE_RESCUE: 0.0})
    for i, cpd in enumerate(params.compounds):
        for j, dose in enumerate(dose_series(cpd, params)):
            rescue = float(rescue_fraction(dose, cpd))
            for rep in range(params.replicates):
                dr, c = slots[j * params.replicates + rep]
                base[(2 * i + 1 + dr, c)].update({
                    ROLE: "treatment", COMPOUND: cpd.name, DOSE: float(dose), TRUE_STIMULUS: top,
                    TRUE_SEVERITY: disease_sev * (1.0 - rescue), TRUE_RESCUE: rescue,
                    TRUE_EC50: cpd.ec50_um, TRUE_HILL: cpd.hill, TRUE_MAX_RESCUE: cpd.max_rescue})
    rows = []
    for (r, c), info in base.items():
        if n_wells == 96:
            rows.append({"row": r, "col": c, **info})
        else:
            for q in range(4):
                r4, c4 = _to_384(r, c, q)
                rows.append({"row": r4, "col": c4, **info})
    return rows


def build_plate_table(seed: int, plate_number: int, n_wells: int = 96, kind: PlateKind = "training",
                      params: SynthParams = DEFAULT_PARAMS) -> pd.DataFrame:
    """The plate map plus ground truth of one synthetic plate (no images).

    Returns
    -------
    pd.DataFrame
        One row per well in row-major order: ``Metadata_Plate``, ``Metadata_Well``,
        ``Metadata_Compound``, ``Metadata_Dose_uM`` (compound dose, uM; the stimulus dose on
        training plates), ``Metadata_Role``, ``Metadata_Class`` (Int64; <NA> for treated and empty
        wells of screening plates), ``Truth_Stimulus_uM``, ``Truth_Severity``, ``Truth_Rescue``,
        ``Truth_EC50_uM``, ``Truth_Hill``, ``Truth_Max_Rescue``.
    """
    if n_wells not in (96, 384):
        raise NeuroRGError(f"synthetic plates are 96 or 384 wells; got {n_wells}")
    if kind == "training":
        rows = _training_layout(_rng(seed, plate_number, _PLATE_STREAM, 1), n_wells, params)
    elif kind == "screen":
        rows = _screen_layout(n_wells, params)
    else:
        raise NeuroRGError(f"plate kind {kind!r} is not one of {', '.join(PLATE_KINDS)}")
    df = pd.DataFrame(rows).sort_values(["row", "col"]).reset_index(drop=True)
    df.insert(0, WELL, [format_well(r, c) for r, c in zip(df["row"], df["col"])])
    df.insert(0, PLATE, plate_name(plate_number))
    df[CLASS] = df[CLASS].astype("Int64")
    return df.drop(columns=["row", "col"])


GROUND_TRUTH_FILE = "ground_truth.csv"
"""Written beside every synthetic plate's images (and by nothing else)."""


def is_synthetic_plate(source: str | Path) -> bool:
    """A plate is synthetic when the generator's ``ground_truth.csv`` lies in its folder (or a
    folder inside it) or in its zip."""
    src = Path(source)
    if src.is_file() and src.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(src) as zf:
                return any(PurePosixPath(n).name == GROUND_TRUTH_FILE for n in zf.namelist())
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError):
            return False
    return src.is_dir() and next(src.rglob(GROUND_TRUTH_FILE), None) is not None


def plate_name(plate_number: int) -> str:
    """1 -> 'plate_01'."""
    return f"plate_{plate_number:02d}"


def plate_effects_for(seed: int, plate_number: int, params: SynthParams = DEFAULT_PARAMS) -> PlateEffects:
    """The batch effects of plate ``plate_number`` (1-based) under ``seed``, as the writer uses them."""
    return draw_plate_effects(_rng(seed, plate_number, _PLATE_STREAM, 0), params)


def render_well(seed: int, plate_number: int, well: str, severity: float, n_fields: int, size: int,
                plate_effects: PlateEffects, params: SynthParams = DEFAULT_PARAMS,
                magnification: float = 1.0) -> np.ndarray:
    """All fields of one well: (n_fields, size, size, 3) uint8, reproducible from (seed, plate, well)
    (the same cells and draws at any ``magnification``, see ``render_field``)."""
    r, c = parse_well(well)
    rng = _rng(seed, plate_number, _WELL_STREAM, r, c)
    well_sev = float(severity) + rng.normal(0.0, params.well_severity_sd)
    well_gain = float(np.exp(rng.normal(0.0, params.well_gain_sd)))
    return np.stack([render_field(rng, well_sev, plate_effects, size, params, well_gain, magnification)
                     for _ in range(n_fields)])


# --- writing through the layout's spec (neurorg_core.layouts) ------------------------------------

_BIT_DEPTH_DTYPE = {8: np.dtype(np.uint8), 12: np.dtype(np.uint16), 16: np.dtype(np.uint16)}
"""The pixel type files of each bit depth are written in."""


def _at_bit_depth(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """8-bit pixels as written: unchanged for 8 bits; round(v * 4095 / 255) in uint16 for 12-bit
    camera data; v * 257 (the full 16-bit range) for 16 bits."""
    if bit_depth == 16:
        return img.astype(np.uint16) * np.uint16(257)
    if bit_depth == 12:
        return np.rint(img.astype(np.float32) * np.float32(4095 / 255)).astype(np.uint16)
    return img


@dataclass(frozen=True)
class _WellJob:
    """Everything a worker needs to render one well and write it through its layout."""

    seed: int
    well: str
    severity: float
    effects: PlateEffects
    params: SynthParams
    layout: str            # a layout name (``layouts.layout_spec``): specs are found, not pickled
    target: WriteTarget
    bit_depth: int
    magnification: float = 1.0


def _run_job(job: _WellJob) -> None:
    """Render one well and write its files through the layout's spec."""
    t = job.target
    fields = render_well(job.seed, t.plate_number, job.well, job.severity, t.n_fields, t.size,
                         job.effects, job.params, job.magnification)
    layout_spec(job.layout).write_well(t, job.well, _at_bit_depth(fields, job.bit_depth))


def _check_layout(layout: str, kind: str, bit_depth: int, n_workers: int) -> LayoutSpec:
    """The layout's spec, refusing what it cannot hold (checked before anything is written)."""
    spec = layout_spec(layout)
    if kind not in PLATE_KINDS:
        raise NeuroRGError(f"plate kind {kind!r} is not one of {', '.join(PLATE_KINDS)}")
    if spec.labelled and kind != "training":
        others = [n for n in layout_names() if not layout_spec(n).labelled]
        raise NeuroRGError(f"the {spec.name} layout ({spec.example}) holds class-labelled training "
                           f"plates only; use {', '.join(others)} for screening plates")
    if bit_depth not in BIT_DEPTHS:
        raise NeuroRGError(f"bit_depth {bit_depth} is not one of {', '.join(map(str, BIT_DEPTHS))}")
    if _BIT_DEPTH_DTYPE[bit_depth] not in spec.dtypes:
        bits = "/".join(str(8 * d.itemsize) for d in spec.dtypes)
        raise NeuroRGError(f"the {spec.name} layout is {bits}-bit only; bit_depth {bit_depth} does not fit")
    if n_workers > 1 and not builtin_layout(spec.name):
        raise NeuroRGError(f"layout {spec.name!r} is registered in this process only; write it with "
                           "n_workers=1 (worker processes know the built-in layouts)")
    return spec


def write_synthetic_plates(out_dir: str | Path, seed: int, n_plates: int = 1, n_wells: int = 96,
                           n_fields: int = 4, size: int = 512, layout: str = "imagexpress",
                           kind: str = "training", params: SynthParams | None = None,
                           bit_depth: int = 8, n_workers: int = 1, magnification: float = 1.0,
                           wells: Sequence[str] | None = None) -> list[Path]:
    """Render synthetic plates with their plate maps and ground truth.

    Parameters
    ----------
    out_dir : path
        Parent folder; plate ``n`` goes to ``out_dir/plate_NN`` (created; existing files with the
        same names are overwritten).
    seed : int
        Master seed; the same seed writes the same bytes (whatever ``n_workers``).
    n_plates : int
        Number of plates (each with its own batch effects and, for training, class positions).
    n_wells : {96, 384}
    n_fields : int
        Fields (sites) per well.
    size : int
        Field edge, pixels.
    layout : str
        A layout name (``layouts.layout_names()``); the layout's spec writes the files:
        ImageXpress ``plate_NN_<well>_s<site>_w<ch>.tif`` (ch 1 nucleus, 2 neuron, 3 microglia);
        Operetta ``Images/rRRcCCfFFp01-chCsk1fk1fl1.tiff``; ``<well>_s<site>.tif`` multi-channel
        TIFFs; or the study's ``{class}_Plate_{n}.npy`` + ``.csv`` (training plates only). A
        layout registered at run time (``layouts.register_layout``) is written with ``n_workers=1``.
    kind : {"training", "screen"}
    params : SynthParams, optional
        Knobs; ``None`` means the defaults.
    bit_depth : {8, 12, 16}
        12-bit output stores round(v * 4095 / 255) in 16-bit files (a 12-bit camera), 16-bit output
        257 x the 8-bit value (neither for npy).
    n_workers : int
        Processes rendering wells in parallel (1 = in this process).
    magnification : float
        Objective magnification relative to the native scale (see ``render_field``). The pixel
        size, ``SYNTH_PIXEL_SIZE_UM / magnification`` µm, is written into the files' metadata
        (MetaMorph description, Harmony ``Images/Index.idx.xml``, TIFF resolution; npy has none).
    wells : sequence of str, optional
        Render only these wells of the layout (e.g. a few per class for a quick test); the plate
        map and ground truth then list only them. Default: every well the layout images.

    Returns
    -------
    list of Path
        The plate folders, each holding the images, ``platemap.csv`` and ``ground_truth.csv``.
    """
    p = params if params is not None else DEFAULT_PARAMS
    spec = _check_layout(layout, kind, bit_depth, n_workers)
    p.at_magnification(magnification)  # refuses a magnification out of range, naming it
    if n_wells not in (96, 384):
        raise NeuroRGError(f"synthetic plates are 96 or 384 wells; got {n_wells}")
    if size < 8:
        raise NeuroRGError(f"field size {size} px is too small; expected at least 8 px")
    if n_plates < 1 or n_fields < 1 or n_workers < 1:
        raise NeuroRGError(f"need at least one plate, field and worker; got {n_plates} plates, "
                           f"{n_fields} fields, {n_workers} workers")
    out = Path(out_dir)
    folders = []
    executor = (ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
                if n_workers > 1 else None)
    try:
        for k in range(1, n_plates + 1):
            folder = out / plate_name(k)
            folder.mkdir(parents=True, exist_ok=True)
            table = build_plate_table(seed, k, n_wells, kind, p)  # type: ignore[arg-type]
            if wells is not None:
                table = _only_wells(table, wells)
            effects = plate_effects_for(seed, k, p)
            imaged = table[table[ROLE] != "empty"]
            log.info("%s: %s plate, %d wells imaged, %d fields of %d px, %s", folder.name, kind,
                     len(imaged), n_fields, size, effects)
            target = WriteTarget(
                folder=folder, plate_name=plate_name(k), plate_number=k, wells=tuple(imaged[WELL]),
                labels=tuple(int(c) for c in imaged[CLASS]) if kind == "training" else None,
                n_fields=n_fields, size=size, dtype=_BIT_DEPTH_DTYPE[bit_depth],
                pixel_size_um=SYNTH_PIXEL_SIZE_UM / magnification)
            spec.begin_plate(target)
            jobs = [_WellJob(seed, w, float(sv), effects, p, spec.name, target, bit_depth, float(magnification))
                    for w, sv in zip(imaged[WELL], imaged[TRUE_SEVERITY])]
            for _ in (executor.map(_run_job, jobs, chunksize=4) if executor is not None
                      else map(_run_job, jobs)):
                pass
            spec.end_plate(target)
            map_cols = [PLATE, WELL, COMPOUND, DOSE, ROLE] + ([CLASS] if kind == "training" else [])
            table[map_cols].to_csv(folder / "platemap.csv", index=False)
            table.to_csv(folder / GROUND_TRUTH_FILE, index=False)
            folders.append(folder)
    finally:
        if executor is not None:
            executor.shutdown()
    return folders


def _only_wells(table: pd.DataFrame, wells: Sequence[str]) -> pd.DataFrame:
    """The rows of ``wells`` (any spelling), in plate order; unknown wells are an error."""
    wanted = {format_well(*parse_well(w)) for w in wells}
    unknown = sorted(wanted - set(table[WELL]))
    if unknown or not wanted:
        raise NeuroRGError(f"wells {', '.join(unknown[:5]) or '(none)'} are not on this plate layout; "
                           f"expected some of {', '.join(table[WELL].iloc[:3])} ...")
    return table[table[WELL].isin(wanted)].reset_index(drop=True)

