"""Which device runs a model: the accelerators the Keras backend sees, the inference backend
``auto`` picks, batch sizes for the device, bf16, XLA/jit and augmentation-place choices for training.

Keras 3 runs on TensorFlow, JAX or PyTorch (``KERAS_BACKEND``); each sees GPUs its own way, so
``visible_accelerators`` asks the backend Keras is using. It first looks for an accelerator's
device nodes (``/dev/nvidia*``, ``/dev/kfd``, ``/dev/accel*``): where there are none no backend
can see one, and nothing is imported (scoring on a CPU machine never pays for importing
TensorFlow just to learn it has no GPU).

Inference: ``auto`` runs Keras when an accelerator is visible, LiteRT (the XNNPACK CPU fast path)
otherwise. Every choice that depends on the device takes the list of accelerators as an
argument, so tests inject "a GPU is present" without one.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)

Backend = Literal["auto", "litert", "keras"]
BACKENDS: tuple[str, ...] = ("auto", "litert", "keras")
"""``auto``: Keras on an accelerator when one is visible to the Keras backend, else LiteRT."""
Engine = Literal["litert", "keras"]
"""What ``auto`` resolves to: the code that really runs."""

Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
PrecisionChoice = Literal["auto", "float32", "bfloat16"]
"""Training: ``auto`` = bf16 mixed precision where every visible accelerator computes it natively
(NVIDIA compute capability 8.0 and up, TPUs), float32 elsewhere (the CPU)."""

AugmentOn = Literal["loader", "device"]
AugmentChoice = Literal["auto", "loader", "device"]
AUGMENT_CHOICES: tuple[str, ...] = ("auto", "loader", "device")
"""Where training's augmentation runs: ``device`` = inside the compiled train step
(``trainloop.FluorescenceAugment``), ``loader`` = numpy on the crop loader's threads, overlapped
with the step (``augment.LoaderAugment``); ``auto`` = device with an accelerator, loader on the CPU."""

DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
"""Device files without which no NVIDIA, AMD (ROCm) or TPU accelerator can be used."""


@dataclass(frozen=True)
class Accelerator:
    """One accelerator the Keras backend can use.

    Attributes
    ----------
    kind : str
        ``"gpu"`` or ``"tpu"``.
    name : str
        What the backend calls it (e.g. ``"NVIDIA H200"``, ``"cuda:0"``).
    memory_bytes : int or None
        Its memory, where the backend says without allocating.
    bf16 : bool
        Whether it computes bfloat16 natively (NVIDIA compute capability >= 8.0, TPUs).
    """

    kind: str
    name: str
    memory_bytes: int | None = None
    bf16: bool = False

    def describe(self) -> str:
        mem = f", {self.memory_bytes / 2**30:.0f} GiB" if self.memory_bytes else ""
        return f"{self.kind.upper()} {self.name}{mem}{', bf16' if self.bf16 else ''}"


AcceleratorQuery = Callable[[], Sequence[Accelerator]]
"""A function listing the accelerators (``visible_accelerators``; tests inject their own)."""


def keras_backend() -> str:
    """The backend Keras runs on (``KERAS_BACKEND``, else ``~/.keras/keras.json``, else tensorflow),
    read without importing Keras."""
    name = os.environ.get("KERAS_BACKEND", "").strip()
    if name:
        return name
    import json
    from pathlib import Path

    cfg = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return str(json.loads(cfg.read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


def _device_nodes() -> list[str]:
    """The accelerator device files present (``DEVICE_NODES``), sorted."""
    return sorted(p for pattern in DEVICE_NODES for p in glob.glob(pattern))


def unseen_accelerator_note() -> str | None:
    """Why a machine with an accelerator's device files runs on the CPU, or None when it has none.

    The usual cause is the CPU install's Keras backend (``tensorflow-cpu``) on a GPU machine, or
    ``KERAS_BACKEND`` not set after the GPU install: ``auto`` then picks LiteRT, which must not
    pass unnoticed (README, "On a GPU")."""
    nodes = _device_nodes()
    if not nodes:
        return None
    return (f"accelerator device files exist ({', '.join(nodes[:3])}) but Keras's {keras_backend()} backend sees "
            "no GPU, so everything runs on the CPU; for the GPU: pip install -r requirements-gpu.txt and "
            "export KERAS_BACKEND=jax (README, 'On a GPU')")


def _capability_bf16(major: int | None) -> bool:
    return major is not None and major >= 8


def _tensorflow_accelerators() -> list[Accelerator]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    found = []
    for kind in ("GPU", "TPU"):
        for dev in tf.config.list_physical_devices(kind):
            details = tf.config.experimental.get_device_details(dev) if kind == "GPU" else {}
            cc = details.get("compute_capability")
            found.append(Accelerator(kind.lower(), details.get("device_name", dev.name), None,
                                     kind == "TPU" or _capability_bf16(cc[0] if cc else None)))
    return found


def _jax_accelerators() -> list[Accelerator]:
    import jax

    found = []
    for dev in jax.devices():
        if dev.platform == "cpu":
            continue
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        cc = getattr(dev, "compute_capability", None)
        major = int(str(cc).split(".")[0]) if cc else None
        kind = "tpu" if dev.platform == "tpu" else "gpu"
        found.append(Accelerator(kind, str(getattr(dev, "device_kind", dev)),
                                 (stats or {}).get("bytes_limit"), kind == "tpu" or _capability_bf16(major)))
    return found


def _torch_accelerators() -> list[Accelerator]:
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        found.append(Accelerator("gpu", prop.name, int(prop.total_memory), _capability_bf16(prop.major)))
    return found


_QUERIES = {"tensorflow": _tensorflow_accelerators, "jax": _jax_accelerators, "torch": _torch_accelerators}


def visible_accelerators() -> tuple[Accelerator, ...]:
    """The GPUs / TPUs the Keras backend (``keras_backend()``) can use; () on a CPU machine.

    No accelerator device node (``DEVICE_NODES``): () at once, nothing imported. Otherwise the
    backend's own library is asked (TensorFlow ``list_physical_devices``, ``jax.devices()``,
    ``torch.cuda``).

    Raises
    ------
    NeuroRGError
        If ``KERAS_BACKEND`` names a backend other than tensorflow, jax or torch.
    """
    backend = keras_backend()
    if backend not in _QUERIES:
        raise NeuroRGError(f"KERAS_BACKEND={backend!r}; expected one of {', '.join(_QUERIES)}")
    if not _device_nodes():
        return ()
    found = tuple(_QUERIES[backend]())
    if not found:
        log.warning(unseen_accelerator_note())
    return found


def check_backend(backend: str) -> str:
    """``backend`` if it is one of ``BACKENDS``, else a ``NeuroRGError`` listing them."""
    if backend not in BACKENDS:
        raise NeuroRGError(f"backend {backend!r} is not one of {', '.join(BACKENDS)} (auto: Keras on a GPU "
                           "when the Keras backend sees one, LiteRT on the CPU otherwise)")
    return backend


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else a ``NeuroRGError`` listing them."""
    if precision not in PRECISIONS:
        raise NeuroRGError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def resolve_backend(backend: str, precision: str = "float32", *,
                    accelerators: AcceleratorQuery = visible_accelerators) -> Engine:
    """The inference engine that runs for a ``backend`` choice.

    ``litert`` and ``keras`` are themselves; ``auto`` is ``keras`` when ``accelerators()`` lists
    one, ``litert`` otherwise. bfloat16 inference runs on Keras only: ``auto`` with bfloat16 is
    Keras, and ``litert`` with bfloat16 is refused (LiteRT here runs float32 only).
    """
    check_backend(backend)
    check_precision(precision)
    if backend == "litert" and precision == "bfloat16":
        raise NeuroRGError("bfloat16 inference runs on the keras backend; LiteRT runs float32. Use --backend "
                           "keras (or auto) with --precision bfloat16")
    if backend != "auto":
        return backend  # type: ignore[return-value]
    if precision == "bfloat16":
        return "keras"
    found = accelerators()
    engine: Engine = "keras" if found else "litert"
    log.info("backend auto: %s (%s)", engine, ", ".join(a.describe() for a in found) or
             f"no GPU visible to Keras's {keras_backend()} backend")
    return engine


def resolve_precision(choice: str, accelerators: Sequence[Accelerator]) -> Precision:
    """Training precision: ``auto`` is bfloat16 when there are accelerators and all compute bf16
    natively, float32 otherwise (the CPU: bf16 there is emulated and slower)."""
    if choice == "auto":
        return "bfloat16" if accelerators and all(a.bf16 for a in accelerators) else "float32"
    return check_precision(choice)  # type: ignore[return-value]


def resolve_jit(choice: bool | None, backend: str, accelerators: Sequence[Accelerator]) -> bool:
    """Whether the train step is compiled (XLA on TensorFlow, ``jax.jit``, ``torch.compile``).

    ``None`` (auto): always on JAX (Keras runs JAX eagerly otherwise, far slower); on TensorFlow and
    torch only with an accelerator (on 2 CPU cores XLA compiling costs minutes and gains little).
    """
    if choice is not None:
        return bool(choice)
    return backend == "jax" or bool(accelerators)


def resolve_augment_on(choice: str, accelerators: Sequence[Accelerator]) -> AugmentOn:
    """Where the training augmentation runs: ``auto`` is ``device`` when there are accelerators (it
    then costs the host nothing), ``loader`` on the CPU (there the device layer's graph takes about
    3x numpy's time per batch, and on the loader threads numpy overlaps the train step)."""
    if choice not in AUGMENT_CHOICES:
        raise NeuroRGError(f"augmentation place {choice!r} is not one of {', '.join(AUGMENT_CHOICES)}")
    if choice == "auto":
        return "device" if accelerators else "loader"
    return choice  # type: ignore[return-value]


def resolve_loader_workers(choice: int | None, augment_on: str, cpu_count: int | None = None) -> int:
    """Threads of the crop loader: ``choice`` when given (>= 1); ``None`` (auto) is 2 when the
    augmentation runs on the device (the threads only read), and half the CPU cores (at least 1)
    when it runs on the loader: the other half is the train step's. On 2 cores, 2 augmenting
    threads beside TensorFlow's own 2 slowed the demo's step from about 170 to 260 ms (measured
    under other agents' load; benchmarks/RESULTS.md)."""
    if choice is not None:
        if int(choice) < 1:
            raise NeuroRGError(f"loader workers {choice}; expected 1 or more")
        return int(choice)
    if augment_on == "device":
        return 2
    return max(1, (cpu_count or os.cpu_count() or 2) // 2)


ACCELERATOR_BATCH_PIXELS = 64 * 456 * 456
"""Input pixels per inference batch on an accelerator with ``ACCELERATOR_REFERENCE_BYTES`` of
memory (64 crops of the study's B5 at 456 px, 256 at 224 px); scaled with the device's memory."""
ACCELERATOR_REFERENCE_BYTES = 16 * 2**30
MAX_ACCELERATOR_BATCH = 512


def accelerator_batch_size(input_size: int, accelerator: Accelerator) -> int:
    """Crops per Keras ``predict`` batch on an accelerator: ``ACCELERATOR_BATCH_PIXELS`` input
    pixels per 16 GiB of its memory (16 GiB assumed where unknown), at most 4 x that and
    ``MAX_ACCELERATOR_BATCH`` crops, at least 1. (Unmeasured on a GPU: see benchmarks/RESULTS.md.)"""
    mem = accelerator.memory_bytes or ACCELERATOR_REFERENCE_BYTES
    scale = min(4.0, max(1.0, mem / ACCELERATOR_REFERENCE_BYTES))
    return int(max(1, min(MAX_ACCELERATOR_BATCH, scale * ACCELERATOR_BATCH_PIXELS // int(input_size) ** 2)))


def describe_device(accelerators: Sequence[Accelerator]) -> str:
    """One line for logs, benchmarks and cards: the Keras backend and the device it runs on."""
    where = "; ".join(a.describe() for a in accelerators) or f"CPU ({os.cpu_count()} cores)"
    note = None if accelerators else unseen_accelerator_note()
    return f"keras {keras_backend()} on {where}" + (f" ({note})" if note else "")
