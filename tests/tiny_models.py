"""The tiny test models, built in code: random-weight ``efficientnet_tiny`` members at 32 px whose
outputs vary from crop to crop. The session fixtures ``tiny_model`` / ``tiny_members``
(``tests/conftest.py``) build each once and share it between tests/core and tests/dashboard, so a
member converted to LiteRT in one is a cache hit in the other (same weights, same member id)."""

from __future__ import annotations

import numpy as np

TINY_INPUT = 32
"""Model input edge of the tiny members, pixels (the 64 px test fields give 2 x 2 tiles)."""


def scaled_model(channels: tuple[str, ...]):
    """Random weights with the input normalisation (mean 0.05, sd 0.001) and
    the head scaled up, so that dim fluorescence crops get distinct probabilities (a freshly
    initialised EfficientNet says ~1/6 for everything)."""
    from neurorg_core.model import build_model

    n = len(channels)
    model = build_model("efficientnet_tiny", TINY_INPUT, channels, mean=[0.05] * n, std=[0.001] * n)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 100, bias])
    return model


def spread_model(channels: tuple[str, ...], head_seed: int):
    """Random weights with a random-normal head (sd 300, numpy seed
    ``head_seed``), so that members give clearly different answers on random crops."""
    from neurorg_core.model import build_model

    n = len(channels)
    model = build_model("efficientnet_tiny", TINY_INPUT, channels, [0.3] * n, [0.2] * n)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(head_seed).normal(0, 300.0, kernel.shape).astype("float32"), bias])
    return model
