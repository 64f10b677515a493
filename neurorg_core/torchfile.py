"""Read PyTorch checkpoints and the study's normalisation pickle without torch.

The NeuroRG study publishes its models as files written by ``torch.save(model.state_dict(), path)``
and its per-channel normalisation as ``normalize_parameters.pkl`` (``{"mean": [...], "std": [...]}``).
Neither needs torch to be read, and neither may run code when read: a pickle can call any
importable function, so both readers use *restricted unpicklers* that only build what these
files legitimately hold and refuse everything else, naming the file and the object refused.

**torch's zip serialization** (every ``torch.save`` since torch 1.6, 2020): a zip archive whose
records sit under one top folder (``archive/`` or the file's own name):

- ``<top>/data.pkl``: the pickled object; each tensor is ``torch._utils._rebuild_tensor_v2(storage,
  offset, size, stride, ...)`` and each storage a *persistent id* ``("storage", torch.FloatStorage,
  key, location, numel)`` pointing at the raw bytes in ``<top>/data/<key>``;
- ``<top>/byteorder`` (``little`` or ``big``), ``<top>/version`` and a few bookkeeping records.

Storages are mapped to numpy arrays (the location, ``cpu`` or ``cuda:0``, is ignored: no GPU build
of torch is involved), tensors are numpy views of them with the recorded offset, shape and
strides, copied to contiguous arrays. The pre-1.6 ("legacy") format and TorchScript archives are
refused with a message saying what to do instead.
"""

from __future__ import annotations

import collections
import io
import logging
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)

# torch's storage classes -> numpy dtypes (bfloat16 has none: read as uint16 and widened)
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "c8", "ComplexDoubleStorage": "c16",
}
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
"""The start of a pre-1.6 torch file: protocol-2 pickle of torch's magic number 0x1950a86a20f9469cfc6c."""

STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")
"""Keys under which training checkpoints commonly nest the state_dict (unwrapped, and logged)."""


# --- torch checkpoints ----------------------------------------------------------------------

class _Refused(Exception):
    """A pickle asked for a global the reader does not allow."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _StorageType:
    """Stands for ``torch.FloatStorage`` etc. inside a checkpoint's pickle."""

    def __init__(self, name: str):
        self.name = name
        self.code = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a strided view of a storage, copied to a contiguous array."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise ValueError(f"tensor with size {size}, stride {stride}, offset {offset} is malformed")
    if math.prod(size) == 0:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ValueError(f"tensor of size {size} reaches element {last} of a storage of {storage.size}")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view, copy=True, order="C")


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a Parameter is its data here."""
    return data


_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _CheckpointUnpickler(pickle.Unpickler):
    """Builds OrderedDicts, tensors and storages; refuses every other global."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, top: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self._zip, self._top, self._order = archive, top, byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(module, name)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ValueError(f"unexpected persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        key = str(key)
        if key not in self._storages:
            raw = self._zip.read(f"{self._top}/data/{key}")
            self._storages[key] = _storage_array(raw, kind, int(numel), self._order, key)
        return self._storages[key]


def _storage_array(raw: bytes, kind: _StorageType, numel: int, byteorder: str, key: str) -> np.ndarray:
    """A storage record's bytes as a 1-D numpy array of its dtype (bfloat16 widened to float32)."""
    code = kind.code
    item = 2 if code == "bf16" else np.dtype(code).itemsize
    if len(raw) != numel * item:
        raise ValueError(f"storage {key} ({kind.name}) holds {len(raw)} bytes; expected {numel} x {item}")
    prefix = "<" if byteorder == "little" else ">"
    if code == "bf16":
        bits = np.frombuffer(raw, prefix + "u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    dtype = np.dtype(code) if code in ("?", "u1", "i1") else np.dtype(prefix + code)
    return np.frombuffer(raw, dtype).astype(dtype.newbyteorder("="), copy=False)


def _archive_top(archive: zipfile.ZipFile, path: Path) -> str:
    """The top folder of a torch zip archive (the folder holding ``data.pkl``)."""
    names = archive.namelist()
    if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
        raise NeuroRGError("is a TorchScript archive (torch.jit.save); expected a state_dict written by "
                           "torch.save(model.state_dict(), path)", path=path)
    tops = sorted({n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")})
    if len(tops) == 1:
        return tops[0]
    raise NeuroRGError(f"is a zip archive but not a torch.save checkpoint ({len(tops)} data.pkl "
                       f"records at the top; entries such as {', '.join(names[:3]) or 'none'})", path=path)


def _not_a_zip(path: Path) -> NeuroRGError:
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_LEGACY_MAGIC):
        return NeuroRGError(
            "is a legacy PyTorch file (torch < 1.6, or saved with _use_new_zipfile_serialization=False), "
            "which cannot be read without running its pickle; re-save it with torch >= 1.6: "
            "torch.save(torch.load(old, weights_only=True), new)", path=path)
    if head.startswith(b"PK"):
        return NeuroRGError("is a truncated or corrupt zip archive (no central directory); expected a "
                            "complete torch.save checkpoint", path=path)
    if not head:
        return NeuroRGError("is empty; expected a torch.save checkpoint", path=path)
    return NeuroRGError(f"is not a PyTorch checkpoint (starts with {head[:8]!r}); expected a zip archive "
                        "written by torch.save(model.state_dict(), path)", path=path)


def _load_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise NeuroRGError("checkpoint file not found", path=path)
    if not zipfile.is_zipfile(path):
        raise _not_a_zip(path)
    try:
        with zipfile.ZipFile(path) as archive:
            top = _archive_top(archive, path)
            names = set(archive.namelist())
            order = (archive.read(f"{top}/byteorder").decode().strip()
                     if f"{top}/byteorder" in names else "little")
            if order not in ("little", "big"):
                raise ValueError(f"byteorder record says {order!r}")
            return _CheckpointUnpickler(archive.read(f"{top}/data.pkl"), archive, top, order).load()
    except _Refused as exc:
        raise NeuroRGError(
            f"holds a pickled {exc.module}.{exc.name}, which a state_dict never contains; the reader "
            "refuses to build it (a pickle can run code). Expected torch.save(model.state_dict(), path), "
            "not a whole model or other objects", path=path) from None
    except NeuroRGError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, pickle.UnpicklingError, TypeError,
            AttributeError, IndexError, OSError, RuntimeError, UnicodeDecodeError) as exc:
        raise NeuroRGError(f"is a corrupt or truncated torch checkpoint ({type(exc).__name__}: {exc})",
                           path=path) from exc


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch ``state_dict`` file into numpy arrays, without torch.

    Parameters
    ----------
    path
        A file written by ``torch.save(model.state_dict(), path)`` (torch >= 1.6 zip format). A
        training checkpoint nesting the state_dict under ``state_dict``, ``model_state_dict`` or
        ``model`` is unwrapped; a ``module.`` prefix on every key (``nn.DataParallel``) is removed.

    Returns
    -------
    dict of str -> numpy.ndarray
        Parameter name -> array (contiguous, native byte order; bfloat16 widened to float32), in
        the file's order.

    Raises
    ------
    NeuroRGError
        Missing, empty, legacy-format, TorchScript, truncated or corrupt files, a pickle holding
        anything but tensors (refused, never built), or an object that is not a name -> tensor
        mapping. The message names the file.
    """
    p = Path(path)
    obj = _load_checkpoint(p)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, np.ndarray) for v in inner.values()):
                log.info("%s: using the state_dict nested under %r", p.name, key)
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise NeuroRGError(f"holds a {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}; "
                           "expected a state_dict (parameter name -> tensor)", path=p)
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise NeuroRGError(f"holds {len(bad)} entries that are not named tensors (e.g. {bad[0]!r}); "
                           "expected a state_dict (parameter name -> tensor)", path=p)
    out = dict(obj)
    if all(k.startswith("module.") for k in out):
        out = {k.removeprefix("module."): v for k, v in out.items()}
    return out


# --- the normalisation pickle ---------------------------------------------------------------

def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for raw bytes (latin-1 only)."""
    if encoding != "latin1":
        raise ValueError(f"codec {encoding!r} refused; only latin1 byte strings are read")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy callables a pickled array or scalar needs (numpy 1.x wrote ``numpy.core``,
    numpy 2 writes ``numpy._core``; protocol-2 pickles spell raw bytes with ``_codecs.encode``)."""
    from numpy._core import multiarray

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): _latin1_bytes,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    return allowed


class _NormalizationUnpickler(pickle.Unpickler):
    """Builds dicts, lists, numbers and numpy arrays / scalars; refuses every other global."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise _Refused(module, name)
        return found


def _channel_values(value: Any, key: str, n_channels: int, path: Path) -> tuple[float, ...]:
    """A per-channel list (list, tuple or numeric numpy array) as floats; refuses anything else."""
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"dtype {arr.dtype}")
        values = tuple(float(v) for v in arr.astype(np.float64).ravel())
    except (TypeError, ValueError) as exc:
        raise NeuroRGError(f"{key!r} is a {type(value).__name__} ({exc}); expected {n_channels} numbers, "
                           "one per channel", path=path) from None
    if len(values) != n_channels:
        raise NeuroRGError(f"{key!r} has {len(values)} values {list(values)[:6]}; expected {n_channels}, one "
                           "per channel (nucleus, neuron, microglia)", path=path)
    if not all(math.isfinite(v) for v in values):
        raise NeuroRGError(f"{key!r} holds non-finite values {list(values)}; expected finite numbers", path=path)
    return values


def read_normalization(path: str | Path, n_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Read the study's ``normalize_parameters.pkl``: per-channel ``mean`` and ``std``.

    The study normalises a uint8 field ``x`` as albumentations' ``Normalize(mean, std)`` does,
    ``(x / 255 - mean) / std``, so the values are in [0, 1] intensity units, exactly what a bundle's
    in-model normalisation of [0, 1] crops takes.

    Parameters
    ----------
    path
        A pickle of a dict with ``mean`` and ``std``: lists, tuples or numpy arrays of
        ``n_channels`` numbers (read with a restricted unpickler: dicts, lists, numbers and numpy
        arrays only).
    n_channels
        Channels expected (3: nucleus, neuron, microglia).

    Returns
    -------
    (mean, std)
        Tuples of floats, one per channel.

    Raises
    ------
    NeuroRGError
        Missing or unreadable file, a pickle holding other objects (refused, never built), a
        missing ``mean`` / ``std`` key, the wrong number of values, non-finite values or std <= 0.
        The message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise NeuroRGError("normalisation file not found; expected the study's normalize_parameters.pkl "
                           "(a pickled dict with 'mean' and 'std')", path=p)
    try:
        with open(p, "rb") as f:
            obj = _NormalizationUnpickler(f).load()
    except _Refused as exc:
        raise NeuroRGError(f"holds a pickled {exc.module}.{exc.name}; the reader only builds dicts, lists, "
                           "numbers and numpy arrays (a pickle can run code). Expected {'mean': [...], "
                           "'std': [...]}", path=p) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError, OverflowError) as exc:
        raise NeuroRGError(f"is not a readable pickle ({type(exc).__name__}: {exc}); expected the study's "
                           "normalize_parameters.pkl", path=p) from exc
    if not isinstance(obj, Mapping):
        raise NeuroRGError(f"holds a {type(obj).__name__}; expected a dict with 'mean' and 'std'", path=p)
    missing = [k for k in ("mean", "std") if k not in obj]
    if missing:
        raise NeuroRGError(f"lacks {' and '.join(repr(k) for k in missing)}; it has keys "
                           f"{sorted(map(str, obj.keys()))}; expected 'mean' and 'std'", path=p)
    mean = _channel_values(obj["mean"], "mean", n_channels, p)
    std = _channel_values(obj["std"], "std", n_channels, p)
    if any(s <= 0 for s in std):
        raise NeuroRGError(f"'std' holds {list(std)}; expected every channel's std > 0", path=p)
    if any(abs(m) > 1.5 for m in mean) or any(s > 1.5 for s in std):
        log.warning("%s: mean %s / std %s look like 0-255 units; the study's Normalize uses [0, 1] units "
                    "(x / 255 - mean) / std, which is what is applied", p.name, mean, std)
    return mean, std
