"""Reading torch checkpoints and the normalisation pickle without torch: files written by the real
torch (tests/data/study_b0), byte-level damage to them, and pickles that must never be run."""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neurorg_core.errors import NeuroRGError
from neurorg_core.torch_efficientnet import check_state_dict, round_filters, static_padding, torch_layers
from neurorg_core.torchfile import read_normalization, read_state_dict
from tests.study_data import extract, fold_files, reference


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract(tmp_path_factory.mktemp("study_b0"))


# --- what torch writes ----------------------------------------------------------------------

def test_reads_every_view_and_dtype_torch_writes(study: Path) -> None:
    """Views sharing one storage (transposed, sliced with an offset, strided), half, bfloat16,
    double, int64, bool, a 0-d and an empty tensor: values exactly as torch held them."""
    tensors = read_state_dict(study / "formats" / "tensor_zoo")
    expected = reference()["tensor_zoo"]
    assert list(tensors) == list(expected)
    for name, want in expected.items():
        got = tensors[name]
        assert list(got.shape) == want["shape"], name
        assert got.flags.c_contiguous and got.flags.writeable, name
        values = np.asarray(want["values"], dtype=bool if want["dtype"] == "bool" else np.float64)
        np.testing.assert_array_equal(got.astype(values.dtype), values.reshape(want["shape"]), err_msg=name)
    assert tensors["half"].dtype == np.float16 and tensors["double"].dtype == np.float64
    assert tensors["bfloat16"].dtype == np.float32 and tensors["int64"].dtype == np.int64
    np.testing.assert_array_equal(tensors["transposed"], tensors["contiguous"].T)
    np.testing.assert_array_equal(tensors["sliced"], tensors["contiguous"][1:3, 2:5])


def test_a_study_fold_reads_as_efficientnet_b0_weights(study: Path) -> None:
    sd = read_state_dict(fold_files(study)[0])
    assert len(sd) == 360 and sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (6, 1280) and sd["_bn0.num_batches_tracked"].dtype == np.int64
    weights = check_state_dict(sd, "efficientnet_pytorch_b0", "fold")
    assert len(weights) == 360 - 49   # the 49 batch norms' counters are dropped
    assert all(w.dtype == np.float32 for w in weights.values())
    # batch-norm statistics were computed on real fields, not left at their 0 / 1 start
    assert np.abs(sd["_bn1.running_mean"]).max() > 0.01 and np.abs(sd["_bn1.running_var"] - 1).max() > 0.01


def test_data_parallel_prefix_and_training_checkpoints_are_unwrapped(study: Path) -> None:
    for name in ("dataparallel", "training_checkpoint"):
        sd = read_state_dict(study / "formats" / name)
        assert list(sd) == ["weight", "bias"], name
        np.testing.assert_array_equal(sd["bias"], [0.5, -0.5])


def test_a_checkpoint_saved_from_a_gpu_reads_without_one(study: Path, tmp_path: Path) -> None:
    """The study trained on GPUs, so its storages are recorded at ``cuda:0``; torch.load would need a
    CUDA build (or map_location). The same fold with its storages relabelled ``cuda:0`` reads to the
    same arrays here, where torch is not installed at all."""
    cpu_tag, cuda_tag = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"   # BINUNICODE, memoised once
    fold, gpu_fold = fold_files(study)[0], tmp_path / "gpu_fold"
    with zipfile.ZipFile(fold) as src, zipfile.ZipFile(gpu_fold, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                assert data.count(cpu_tag) == 1 and cuda_tag not in data
                data = data.replace(cpu_tag, cuda_tag)
            dst.writestr(info, data)
    cpu, gpu = read_state_dict(fold), read_state_dict(gpu_fold)
    assert list(gpu) == list(cpu) and len(gpu) == 360
    for name, array in cpu.items():
        np.testing.assert_array_equal(gpu[name], array, err_msg=name)


@pytest.mark.parametrize("name, words", [
    ("whole_model", "holds a pickled torch.nn.modules.linear.Linear"),
    ("torchscript", "is a TorchScript archive"),
    ("legacy", "is a legacy PyTorch file"),
])
def test_whole_models_torchscript_and_legacy_files_are_refused_by_name(study: Path, name: str, words: str) -> None:
    with pytest.raises(NeuroRGError, match=words) as err:
        read_state_dict(study / "formats" / name)
    assert str(err.value).startswith(f"{name}: ")


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"weight": Payload()}, protocol=2))
    with pytest.raises(NeuroRGError, match=r"evil.pt: holds a pickled (posix|nt)\.system"):
        read_state_dict(path)
    assert not marker.exists()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_truncated_corrupt_empty_and_foreign_files_get_a_clear_error(study: Path, tmp_path: Path) -> None:
    good = fold_files(study)[0].read_bytes()
    info = {i.filename: i for i in zipfile.ZipFile(io.BytesIO(good)).infolist()}
    storage = max((i for n, i in info.items() if "/data/" in n), key=lambda i: i.file_size)
    cases = {
        "half.pt": (good[: len(good) // 2], "truncated or corrupt zip archive"),
        "flipped.pt": (_flip(good, storage.header_offset + 200), "corrupt or truncated torch checkpoint"),
        "empty.pt": (b"", "is empty"),
        "notes.txt": (b"mean 0.1 0.2 0.3\n", "is not a PyTorch checkpoint"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NeuroRGError, match=words) as err:
            read_state_dict(tmp_path / name)
        assert str(err.value).startswith(f"{name}: "), err.value
    with pytest.raises(NeuroRGError, match="missing.pt: checkpoint file not found"):
        read_state_dict(tmp_path / "missing.pt")


# --- the normalisation pickle ---------------------------------------------------------------

def test_the_study_normalisation_pickle_reads_as_three_means_and_stds(study: Path) -> None:
    mean, std = read_normalization(study / "normalize_parameters.pkl")
    np.testing.assert_allclose(mean, reference()["normalization"]["mean"], rtol=1e-12)
    np.testing.assert_allclose(std, reference()["normalization"]["std"], rtol=1e-12)


def test_lists_numpy_scalars_and_numpy_1_pickles_are_read(tmp_path: Path) -> None:
    p = tmp_path / "lists.pkl"
    p.write_bytes(pickle.dumps({"mean": [0.1, 0.2, 0.3], "std": (0.2, 0.2, 0.25)}))
    assert read_normalization(p) == ((0.1, 0.2, 0.3), (0.2, 0.2, 0.25))
    scalars = {"mean": [np.float32(0.5)] * 3, "std": np.array([0.1, 0.2, 0.3], np.float32)}
    p.write_bytes(pickle.dumps(scalars, protocol=2).replace(b"numpy._core", b"numpy.core"))  # numpy 1.x
    mean, std = read_normalization(p)
    assert mean == (0.5, 0.5, 0.5) and std == pytest.approx((0.1, 0.2, 0.3))


@pytest.mark.parametrize("content, words", [
    ({"mean": [0.1, 0.2, 0.3]}, "lacks 'std'; it has keys \\['mean'\\]"),
    ({"avg": 1, "sd": 2}, "lacks 'mean' and 'std'"),
    ({"mean": [0.1, 0.2], "std": [0.1, 0.1, 0.1]}, "'mean' has 2 values .* expected 3, one per channel"),
    ({"mean": [0.1, 0.2, 0.3], "std": [0.1, 0.0, 0.1]}, "expected every channel's std > 0"),
    ({"mean": [0.1, float("nan"), 0.3], "std": [0.1, 0.1, 0.1]}, "non-finite"),
    ({"mean": ["a", "b", "c"], "std": [0.1, 0.1, 0.1]}, "'mean' is a list"),
    ([0.1, 0.2, 0.3], "holds a list; expected a dict"),
])
def test_bad_normalisation_content_is_named(tmp_path: Path, content: object, words: str) -> None:
    p = tmp_path / "normalize_parameters.pkl"
    p.write_bytes(pickle.dumps(content))
    with pytest.raises(NeuroRGError, match=f"normalize_parameters.pkl: .*{words}"):
        read_normalization(p)


def test_normalisation_pickles_with_other_objects_or_no_pickle_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "norm.pkl"
    p.write_bytes(pickle.dumps({"mean": Payload(), "std": [1, 1, 1]}))
    with pytest.raises(NeuroRGError, match=r"norm.pkl: holds a pickled (posix|nt)\.system"):
        read_normalization(p)
    assert not marker.exists()
    p.write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(NeuroRGError, match="norm.pkl: is not a readable pickle"):
        read_normalization(p)
    with pytest.raises(NeuroRGError, match="absent.pkl: normalisation file not found"):
        read_normalization(tmp_path / "absent.pkl")


# --- the network's layout -----------------------------------------------------------------

def test_static_padding_and_scaling_follow_efficientnet_pytorch() -> None:
    # B5 built for 456 px: stage 4's 3x3 stride-2 convolution sees 57 px (odd) -> pads 1 and 1;
    # at the study's 1200 px it sees 150 px, where TensorFlow's "same" pads 0 and 1.
    assert static_padding(57, 3, 2) == (1, 1) and static_padding(150, 3, 2) == (0, 1)
    assert static_padding(114, 5, 2) == (1, 2) and static_padding(29, 5, 2) == (2, 2)
    assert static_padding(224, 3, 1) == (1, 1)
    assert round_filters(32, 1.6) == 48 and round_filters(1280, 1.6) == 2048 and round_filters(16, 1.6) == 24
    b5 = torch_layers("efficientnet_pytorch_b5")
    assert sum(1 for t in b5 if t.prefix.endswith("_depthwise_conv")) == 39   # B5's 39 blocks
    assert b5[-1].shapes == {"weight": (6, 2048), "bias": (6,)}


@pytest.mark.parametrize("arch, n_params", [("efficientnet_pytorch_b0", 5_288_548),
                                            ("efficientnet_pytorch_b5", 30_389_784)])
def test_the_layout_has_the_published_parameter_count(arch: str, n_params: int) -> None:
    """With the ImageNet head (1000 classes), the parameters (batch-norm running statistics are
    buffers, not parameters) add up to the published counts of EfficientNet-B0 and -B5 (torchvision's
    model tables, the same network as efficientnet_pytorch): an independent check of every width,
    depth and SE size in the spec that both check_state_dict and the Keras twin follow."""
    layers = torch_layers(arch, n_classes=1000)
    assert sum(math.prod(shape) for t in layers for key, shape in t.shapes.items()
               if not key.startswith("running_")) == n_params


def test_mismatched_architecture_and_class_count_are_named(study: Path) -> None:
    b0 = read_state_dict(fold_files(study)[0])
    with pytest.raises(NeuroRGError, match=r"fold0: is not an efficientnet_pytorch EfficientNet-B5 state_dict: "
                                           r".*it fits efficientnet_b0 \(--arch efficientnet_b0\)"):
        check_state_dict(b0, "efficientnet_pytorch_b5", "fold0")
    wide = read_state_dict(study / "formats" / "efficientnet_b0_1000_classes")
    with pytest.raises(NeuroRGError, match=r"the classifier has 1000 classes \(_fc.weight \(1000, 1280\)\); expected 6"):
        check_state_dict(wide, "efficientnet_pytorch_b0", "wide")
    partial = {k: v for k, v in b0.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(NeuroRGError, match=r"key\(s\) missing \(e.g. _blocks.15"):
        check_state_dict(partial, "efficientnet_pytorch_b0", "partial")
    ints = dict(b0, **{"_fc.bias": b0["_fc.bias"].astype(np.int64)})
    with pytest.raises(NeuroRGError, match="tensor _fc.bias has dtype int64; expected floating-point"):
        check_state_dict(ints, "efficientnet_pytorch_b0", "ints")
