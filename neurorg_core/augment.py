"""The training augmentation: one definition of its numbers (``Augmentation``, ``AUGMENTATION``)
and its numpy implementation, run in the crop loader's threads (``LoaderAugment``).

The same distribution runs on the device, inside the compiled train step, as
``trainloop.FluorescenceAugment`` (keras ops). Which of the two trains a member is
``train.TrainRuntime.augment_on`` (``devices.resolve_augment_on``: on a GPU the device, on the CPU
the loader, where numpy on the loader threads overlaps the train step and costs a third of the
device layer's graph). Both draw, per crop: one of the 8 symmetries of the square (a transpose and
two flips, each with probability 1/2), a Gaussian blur (sigma uniform in ``blur_sigma_px``) with
probability ``blur_fraction`` (``BLUR_RADIUS`` taps each side, edges mirrored as scipy's
``reflect``), a per-channel gain exp(N(0, ``gain_log_sd``)) and offset (uniform in ``offset``), and
additive Gaussian noise of sd uniform in [0, ``noise_sd_max``]; then clip to [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

BLUR_RADIUS = 4
"""Taps either side of the blur kernel: scipy's ``gaussian_filter`` radius (4 sigma) at sigma 1 px."""


@dataclass(frozen=True)
class Augmentation:
    """The numbers of the augmentation (``TrainSettings.augmentation`` is their description)."""

    gain_log_sd: float = 0.2                          # per-channel gain exp(N(0, sd))
    offset: tuple[float, float] = (-0.03, 0.05)       # per-channel offset, uniform, [0, 1] units
    blur_sigma_px: tuple[float, float] = (0.3, 1.0)   # Gaussian blur sigma, uniform, pixels
    blur_fraction: float = 0.3                        # share of crops blurred
    noise_sd_max: float = 0.03                        # additive noise sd, uniform in [0, max]

    def describe(self) -> str:
        return (f"flips, 90 deg rotations, per-channel gain (log-normal sd {self.gain_log_sd:g}) and offset "
                f"({self.offset[0]:g}..{self.offset[1]:g}), Gaussian blur sigma {self.blur_sigma_px[0]:.1f}-"
                f"{self.blur_sigma_px[1]:.1f} px on {self.blur_fraction * 100:.0f} % of crops, "
                f"noise sd 0-{self.noise_sd_max:g}")


AUGMENTATION = Augmentation()
"""The augmentation every member is trained with (on the loader or on the device)."""


def blur_weights(sigma_px: float) -> np.ndarray:
    """The normalised Gaussian kernel (2 * ``BLUR_RADIUS`` + 1 taps) of ``sigma_px`` pixels."""
    taps = np.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=np.float64)
    w = np.exp(-taps ** 2 / (2.0 * float(sigma_px) ** 2))
    return (w / w.sum()).astype(np.float32)


def augment_batch(batch: np.ndarray, rng: np.random.Generator, params: Augmentation = AUGMENTATION) -> np.ndarray:
    """uint8 crops (n, s, s, c) -> augmented float32 crops in [0, 1] (numpy; see the module doc).

    Vectorised over the batch except the blur (a loop over the blurred crops, scipy's separable
    ``correlate1d``). Crops must be square (the transpose is one of the symmetries).
    """
    x = np.multiply(batch, np.float32(1.0 / 255.0), dtype=np.float32)
    n, channels = len(x), x.shape[-1]
    turn = rng.random((n, 3)) < 0.5
    for axes, mask in ((None, turn[:, 0]), (1, turn[:, 1]), (2, turn[:, 2])):
        if mask.any():
            x[mask] = x[mask].transpose(0, 2, 1, 3) if axes is None else np.flip(x[mask], axis=axes)
    sigma = rng.uniform(*params.blur_sigma_px, n)
    for i in np.flatnonzero(rng.random(n) < params.blur_fraction):
        w = blur_weights(sigma[i])
        x[i] = ndimage.correlate1d(ndimage.correlate1d(x[i], w, axis=0, mode="reflect"), w, axis=1, mode="reflect")
    x *= np.exp(rng.normal(0.0, params.gain_log_sd, (n, 1, 1, channels))).astype(np.float32)
    x += rng.uniform(*params.offset, (n, 1, 1, channels)).astype(np.float32)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    noise *= rng.uniform(0.0, params.noise_sd_max, (n, 1, 1, 1)).astype(np.float32)
    x += noise
    return np.clip(x, 0.0, 1.0, out=x)


@dataclass(frozen=True)
class LoaderAugment:
    """``augment_batch`` as a ``cropcache.BatchLoader`` transform: batch number ``k`` of a run is
    augmented with the generator seeded ``(seed, k)``, so the result does not depend on which
    loader thread ran it or when (reproducible for a seed)."""

    params: Augmentation
    seed: int

    def __call__(self, crops: np.ndarray, batch_number: int) -> np.ndarray:
        return augment_batch(crops, np.random.default_rng((int(self.seed), int(batch_number))), self.params)
