"""efficientnet_pytorch's EfficientNet, rebuilt layer for layer in Keras, and its weights mapped in.

The NeuroRG study trained ``efficientnet_pytorch.EfficientNet.from_pretrained('efficientnet-b5',
num_classes=6)``. That package follows the TensorFlow reference EfficientNet (same-padding
convolutions, batch norm with eps 1e-3, swish, squeeze-and-excitation with biases,
``round_filters`` / ``round_repeats``), as ``keras.applications`` does, with one difference that
changes the numbers: **its "same" padding is static**. Each ``Conv2dStaticSamePadding`` computes
its padding once, for the image size the model was *constructed* with (``image_size`` of the
architecture: 224 px for B0 ... 456 px for B5), not for the input it is given. A stride-2
convolution pads ``(k - 2)`` pixels (split ``(k - 2) // 2`` before, the rest after) when its
constructed input size is even and ``(k - 1)`` when it is odd. The study runs B5 on 1200 px
fields: its stage-4 convolution (k 3, stride 2) was built for a 57 px input (odd: pad 1 before,
1 after) and receives 150 px (even: TensorFlow's "same", and so ``keras.applications``, pads 0
before, 1 after). Same output size, shifted sampling grid, different probabilities. At other
sizes even the output sizes differ (B0 at 72 px: 4 x 4 instead of 5 x 5 after stage 4).

So the study's network is rebuilt here, not taken from ``keras.applications``: every k x k
convolution gets an explicit ``ZeroPadding2D`` with efficientnet_pytorch's static amounts and a
``valid`` convolution (stride-1 convolutions pad (k - 1) / 2 on each side at any size, which is
Keras's ``same``). Everything else mirrors ``efficientnet_pytorch.model`` 0.7.1: a block's skip
connection exists only for repeated blocks (the first block of a stage carries its stride as a
list and never skips), SE squeezes to ``max(1, int(input_filters * 0.25))`` channels, dropout
and drop-connect are identities at inference. The model starts with the bundle's in-model
normalisation (``Rescaling(1/255)`` and ``Normalization`` holding mean/255 and (std/255)^2, as
``model.build_model`` does), so it takes [0, 1] crops like every other bundle member and
computes the study's ``(x / 255 - mean) / std`` on the 8-bit field.

Weights: torch ``(out, in, kh, kw)`` convolution kernels become Keras ``(kh, kw, in, out)``,
depthwise ``(c, 1, kh, kw)`` become ``(kh, kw, c, 1)``, ``Linear (out, in)`` becomes
``Dense (in, out)``; batch norm ``weight, bias, running_mean, running_var`` become ``gamma, beta,
moving_mean, moving_variance``. Every layer is named after its state_dict prefix
(``_blocks.3._depthwise_conv`` -> ``blocks_3_depthwise_conv``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import N_CLASSES

log = logging.getLogger(__name__)

# efficientnet_pytorch.utils.efficientnet_params: (width, depth, constructed image size px)
TORCH_PARAMS: dict[str, tuple[float, float, int]] = {
    "b0": (1.0, 1.0, 224), "b1": (1.0, 1.1, 240), "b2": (1.1, 1.2, 260),
    "b3": (1.2, 1.4, 300), "b4": (1.4, 1.8, 380), "b5": (1.6, 2.2, 456),
}
# efficientnet_pytorch.utils.efficientnet blocks_args: repeats, kernel, stride, expand, in, out
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)
SE_RATIO = 0.25
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
ARCH_PREFIX = "efficientnet_pytorch_"
"""Bundle architecture names of these models: ``efficientnet_pytorch_b0`` .. ``_b5``."""

LayerKind = Literal["conv", "depthwise", "conv_bias", "bn", "dense"]


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """efficientnet_pytorch's ``round_filters`` (depth_divisor 8, min_depth None)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """efficientnet_pytorch's ``round_repeats``."""
    return int(math.ceil(depth * repeats))


def static_padding(image_size: int, kernel: int, stride: int) -> tuple[int, int]:
    """``Conv2dStaticSamePadding``'s (before, after) padding for a constructed input size."""
    out = math.ceil(image_size / stride)
    pad = max((out - 1) * stride + kernel - image_size, 0)
    return pad // 2, pad - pad // 2


@dataclass(frozen=True)
class TorchLayer:
    """One weighted layer: its state_dict prefix, Keras layer name and the torch shapes."""

    prefix: str                          # "_blocks.3._depthwise_conv"
    kind: LayerKind
    shapes: dict[str, tuple[int, ...]]   # state_dict suffix ("weight", ...) -> torch shape

    @property
    def keras_name(self) -> str:
        return self.prefix.strip("_").replace("._", "_").replace(".", "_")


@dataclass(frozen=True)
class _Block:
    index: int
    in_filters: int
    out_filters: int
    kernel: int
    stride: int
    expand: int
    first: bool          # first block of its stage: stride as a list in torch, so never a skip
    image_size: int      # constructed input size (px) of the block


def _variant(arch: str) -> str:
    variant = arch.removeprefix(ARCH_PREFIX)
    if variant not in TORCH_PARAMS:
        raise NeuroRGError(f"architecture {arch!r} is not an efficientnet_pytorch model; expected one of "
                           f"{', '.join(ARCH_PREFIX + v for v in TORCH_PARAMS)}")
    return variant


def _blocks(variant: str) -> tuple[list[_Block], int, int]:
    """The blocks of a variant, its stem width and head width (efficientnet_pytorch's loop)."""
    width, depth, size = TORCH_PARAMS[variant]
    image = math.ceil(size / 2)                      # after the stem
    blocks: list[_Block] = []
    for repeats, kernel, stride, expand, f_in, f_out in _STAGES:
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for j in range(round_repeats(repeats, depth)):
            blocks.append(_Block(len(blocks), f_in if j == 0 else f_out, f_out, kernel,
                                 stride if j == 0 else 1, expand, j == 0, image))
            if j == 0:
                image = math.ceil(image / stride)
    return blocks, round_filters(32, width), round_filters(1280, width)


def torch_layers(arch: str, n_classes: int = N_CLASSES) -> list[TorchLayer]:
    """Every weighted layer of ``EfficientNet.from_name('efficientnet-bN', num_classes=n)`` in
    state_dict order, with the tensor shapes its state_dict holds."""
    variant = _variant(arch)
    blocks, stem, head = _blocks(variant)

    def bn(prefix: str, c: int) -> TorchLayer:
        return TorchLayer(prefix, "bn", {k: (c,) for k in ("weight", "bias", "running_mean", "running_var")})

    layers = [TorchLayer("_conv_stem", "conv", {"weight": (stem, 3, 3, 3)}), bn("_bn0", stem)]
    for b in blocks:
        p = f"_blocks.{b.index}"
        mid = b.in_filters * b.expand
        squeezed = max(1, int(b.in_filters * SE_RATIO))
        if b.expand != 1:
            layers += [TorchLayer(f"{p}._expand_conv", "conv", {"weight": (mid, b.in_filters, 1, 1)}),
                       bn(f"{p}._bn0", mid)]
        layers += [
            TorchLayer(f"{p}._depthwise_conv", "depthwise", {"weight": (mid, 1, b.kernel, b.kernel)}),
            bn(f"{p}._bn1", mid),
            TorchLayer(f"{p}._se_reduce", "conv_bias", {"weight": (squeezed, mid, 1, 1), "bias": (squeezed,)}),
            TorchLayer(f"{p}._se_expand", "conv_bias", {"weight": (mid, squeezed, 1, 1), "bias": (mid,)}),
            TorchLayer(f"{p}._project_conv", "conv", {"weight": (b.out_filters, mid, 1, 1)}),
            bn(f"{p}._bn2", b.out_filters),
        ]
    layers += [TorchLayer("_conv_head", "conv", {"weight": (head, blocks[-1].out_filters, 1, 1)}),
               bn("_bn1", head),
               TorchLayer("_fc", "dense", {"weight": (n_classes, head), "bias": (n_classes,)})]
    return layers


def constructed_image_size(arch: str) -> int:
    """The image size (px) efficientnet_pytorch builds the variant's static padding for."""
    return TORCH_PARAMS[_variant(arch)][2]


# --- the Keras model ---------------------------------------------------------------------------

def build_torch_efficientnet(arch: str, input_size: int, mean: Sequence[float], std: Sequence[float]):
    """Build the Keras twin of an efficientnet_pytorch EfficientNet (random weights).

    Parameters
    ----------
    arch
        ``efficientnet_pytorch_b0`` .. ``efficientnet_pytorch_b5``.
    input_size
        Crop edge in pixels; any size the network can shrink (the padding stays that of the
        constructed size, as in efficientnet_pytorch).
    mean, std
        Per-channel normalisation in [0, 1] units (3 values each).

    Returns
    -------
    keras.Model
        Input float32 (n, s, s, 3) in [0, 1]; output float32 (n, 6) softmax probabilities.
    """
    from neurorg_core.model import _keras, set_normalization

    keras = _keras()
    L = keras.layers
    variant = _variant(arch)
    blocks, stem, head = _blocks(variant)
    size = TORCH_PARAMS[variant][2]

    def conv(x, filters: int, kernel: int, stride: int, image: int, name: str, *, bias: bool = False,
             depthwise: bool = False):
        padding = "same"
        if kernel > 1 and stride > 1:
            before, after = static_padding(image, kernel, stride)
            if before or after:
                x = L.ZeroPadding2D(((before, after), (before, after)), name=f"{name}_pad")(x)
            padding = "valid"
        elif kernel == 1:
            padding = "valid"
        if depthwise:
            return L.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=name)(x)
        return L.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=bias, name=name)(x)

    def bn(x, name: str):
        return L.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)

    def swish(x, name: str):
        return L.Activation("swish", name=name)(x)

    inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="crops")
    x = L.Rescaling(1.0 / 255.0, name="rescaling")(inputs)
    x = L.Normalization(axis=-1, name="normalization")(x)
    x = conv(x, stem, 3, 2, size, "conv_stem")
    x = swish(bn(x, "bn0"), "stem_swish")
    for b in blocks:
        p = f"blocks_{b.index}"
        inp = x
        mid = b.in_filters * b.expand
        if b.expand != 1:
            x = swish(bn(conv(x, mid, 1, 1, b.image_size, f"{p}_expand_conv"), f"{p}_bn0"), f"{p}_expand_swish")
        x = conv(x, mid, b.kernel, b.stride, b.image_size, f"{p}_depthwise_conv", depthwise=True)
        x = swish(bn(x, f"{p}_bn1"), f"{p}_depthwise_swish")
        se = L.GlobalAveragePooling2D(keepdims=True, name=f"{p}_se_pool")(x)
        se = L.Conv2D(max(1, int(b.in_filters * SE_RATIO)), 1, use_bias=True, name=f"{p}_se_reduce")(se)
        se = swish(se, f"{p}_se_swish")
        se = L.Conv2D(mid, 1, use_bias=True, activation="sigmoid", name=f"{p}_se_expand")(se)
        x = L.Multiply(name=f"{p}_se_excite")([x, se])
        x = bn(conv(x, b.out_filters, 1, 1, b.image_size, f"{p}_project_conv"), f"{p}_bn2")
        if not b.first and b.in_filters == b.out_filters:
            x = L.Add(name=f"{p}_add")([x, inp])
    x = swish(bn(conv(x, head, 1, 1, 0, "conv_head"), "bn1"), "head_swish")
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = L.Dense(N_CLASSES, activation="softmax", name="fc")(x)
    model = keras.Model(inputs, outputs, name=f"{arch}_rgb")
    set_normalization(model, mean, std)
    return model


# --- state_dict -> Keras weights -----------------------------------------------------------

def _guess_arch(state_dict: Mapping[str, np.ndarray]) -> str | None:
    """The efficientnet_pytorch variant whose layout a state_dict fits (any class count)."""
    fc = state_dict.get("_fc.weight")
    n = int(fc.shape[0]) if isinstance(fc, np.ndarray) and fc.ndim == 2 else N_CLASSES
    for variant in TORCH_PARAMS:
        arch = ARCH_PREFIX + variant
        expected = {f"{t.prefix}.{k}": s for t in torch_layers(arch, n) for k, s in t.shapes.items()}
        if set(expected) <= set(state_dict) and all(
                tuple(state_dict[k].shape) == s for k, s in expected.items()):
            return arch
    return None


def check_state_dict(state_dict: Mapping[str, np.ndarray], arch: str, path: str | Path) -> dict[str, np.ndarray]:
    """Check a state_dict is ``arch`` with 6 classes; return its weights as float32.

    Batch-norm ``num_batches_tracked`` counters are dropped. Raises ``NeuroRGError`` naming the
    file for a wrong class count, missing / unexpected keys or wrong shapes (and says which
    variant the file looks like when it fits another one), or non-float weights.
    """
    layers = torch_layers(arch)
    expected = {f"{t.prefix}.{k}": s for t in layers for k, s in t.shapes.items()}
    given = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
    fc = given.get("_fc.weight")
    if isinstance(fc, np.ndarray) and fc.ndim == 2 and fc.shape[0] != N_CLASSES:
        raise NeuroRGError(f"the classifier has {fc.shape[0]} classes (_fc.weight {tuple(fc.shape)}); expected "
                           f"{N_CLASSES}, the study's classes 0, 0.005, 0.05, 0.5, 5, 20 uM", path=path)
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    wrong = [(k, tuple(given[k].shape), s) for k, s in expected.items()
             if k in given and tuple(given[k].shape) != s]
    if missing or extra or wrong:
        guess = _guess_arch(given)
        hint = (f"; it fits {guess.replace(ARCH_PREFIX, 'efficientnet_')} (--arch "
                f"{guess.replace(ARCH_PREFIX, 'efficientnet_')})" if guess and guess != arch else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected key(s) (e.g. {extra[0]})")
        if wrong:
            k, got, want = wrong[0]
            parts.append(f"{len(wrong)} tensor(s) of the wrong shape (e.g. {k} is {got}, expected {want})")
        raise NeuroRGError(f"is not an efficientnet_pytorch EfficientNet-{_variant(arch).upper()} state_dict: "
                           f"{'; '.join(parts)}{hint}", path=path)
    out = {}
    for k in expected:
        v = given[k]
        if v.dtype.kind != "f":
            raise NeuroRGError(f"tensor {k} has dtype {v.dtype}; expected floating-point weights", path=path)
        if not np.all(np.isfinite(v)):
            raise NeuroRGError(f"tensor {k} holds non-finite values; the checkpoint is corrupt", path=path)
        out[k] = np.ascontiguousarray(v, dtype=np.float32)
    return out


def _keras_arrays(layer: TorchLayer, weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    w = weights[f"{layer.prefix}.weight"] if layer.kind != "bn" else None
    if layer.kind == "conv":
        return [w.transpose(2, 3, 1, 0)]
    if layer.kind == "conv_bias":
        return [w.transpose(2, 3, 1, 0), weights[f"{layer.prefix}.bias"]]
    if layer.kind == "depthwise":
        return [w.transpose(2, 3, 0, 1)]
    if layer.kind == "dense":
        return [w.T, weights[f"{layer.prefix}.bias"]]
    return [weights[f"{layer.prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def load_state_dict(model, arch: str, weights: Mapping[str, np.ndarray]) -> None:
    """Copy a checked state_dict (``check_state_dict``) into the Keras twin, layer by layer."""
    for layer in torch_layers(arch):
        target = model.get_layer(layer.keras_name)
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in _keras_arrays(layer, weights)]
        shapes = [tuple(w.shape) for w in target.weights]
        if shapes != [a.shape for a in arrays]:   # a bug here, never bad input: the layouts are one spec
            raise NeuroRGError(f"layer {layer.keras_name} takes {shapes}, the state_dict gives "
                               f"{[a.shape for a in arrays]}")
        target.set_weights(arrays)
