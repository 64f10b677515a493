"""Keras models on any Keras backend and device: the bf16 precision copy and batched prediction.

``with_precision(model, "bfloat16")`` rebuilds a float32 model with Keras's ``mixed_bfloat16``
policy (variables float32, arithmetic bfloat16) and the same weights. The layers that turn
[0, 1] pixels into normalised input (rescaling, the per-channel normalisation, the channel
selection) and the softmax head stay float32: the normalisation subtracts two numbers of similar
size, which bf16's 8-bit mantissa would blur, and the probabilities keep float32's resolution.

``KerasRunner`` runs every member of a bundle on fixed-size batches (a short last batch is
padded), so a compiled predict function (XLA, ``jax.jit``) is traced once per batch shape.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from neurorg_core.devices import Precision, check_precision
from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import N_CLASSES

log = logging.getLogger(__name__)

FLOAT32_LAYERS = ("InputLayer", "Rescaling", "Normalization", "SelectChannel")
"""Layer classes kept float32 under bf16 (with the head, the layer named ``HEAD_LAYER``)."""
HEAD_LAYER = "predictions"

BF16_TOLERANCE = 0.1
"""Stated bound on |bf16 - float32| of one crop's class probability (measured on the CPU, demo
ensemble on the demo screen, 1,320 crops x 4 members: 0.092 at most)."""
BF16_WELL_TOLERANCE = 0.01
"""Stated bound on |bf16 - float32| of a well's mean class probability (measured: 0.0063 at most
over the demo screen's 88 wells; no called class changed). benchmarks/bf16_check.py."""


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def with_precision(model: Any, precision: str) -> Any:
    """``model`` itself for float32; for bfloat16 a copy built with the ``mixed_bfloat16`` policy
    (except the input layers and the head, see the module doc) holding the same weights.

    Raises
    ------
    NeuroRGError
        For an unknown precision, or a model whose layers cannot be rebuilt from their config.
    """
    check_precision(precision)
    if precision == "float32":
        return model
    keras = _keras()
    from neurorg_core.model import set_model_weights

    def rebuild(layer: Any) -> Any:
        keep = type(layer).__name__ in FLOAT32_LAYERS or layer.name == HEAD_LAYER
        config = {**layer.get_config(), "dtype": "float32" if keep else "mixed_bfloat16"}
        return type(layer).from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=rebuild)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise NeuroRGError(f"model {model.name} cannot be rebuilt in bfloat16 ({exc}); use float32") from exc
    set_model_weights(copy, model.get_weights())
    return copy


def compute_dtypes(model: Any) -> dict[str, str]:
    """Layer name -> compute dtype (what ``with_precision`` did, for tests and logs)."""
    return {layer.name: str(layer.dtype_policy.compute_dtype) for layer in model.layers}


class KerasRunner:
    """Every member of a bundle as a Keras model, predicting fixed-size batches.

    Parameters
    ----------
    models
        The members' float32 Keras models (``model.load_member_model``).
    batch_size
        Crops per ``predict_on_batch`` call; a short last batch is zero-padded to this size.
    precision
        ``"float32"`` (matches LiteRT within 1e-4) or ``"bfloat16"`` (``with_precision``).
    """

    def __init__(self, models: Sequence[Any], batch_size: int, precision: Precision = "float32"):
        self.precision = check_precision(precision)
        self.models = [with_precision(m, precision) for m in models]
        self.batch_size = int(batch_size)
        self.nbytes = sum(int(np.asarray(w).nbytes) for m in self.models for w in m.get_weights())

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 (n_members, n, 6) for float32 crops (n, s, s, 3) in [0, 1]."""
        n, bs = len(x), self.batch_size
        out = np.zeros((len(self.models), n, N_CLASSES), np.float32)
        for a in range(0, n, bs):
            xb = x[a:a + bs]
            m = len(xb)
            if m < bs:
                xb = np.concatenate([xb, np.zeros((bs - m, *x.shape[1:]), x.dtype)])
            for k, model in enumerate(self.models):
                out[k, a:a + m] = np.asarray(model.predict_on_batch(xb), np.float32)[:m]
        return out
