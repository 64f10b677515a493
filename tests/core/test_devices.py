"""Backend selection (auto / litert / keras, with the device query injected), the Keras GPU path
run on the CPU (fixed batches, float32 within 1e-4 of LiteRT, bf16 within its stated tolerance),
and the CLI's and ScoreOptions' answers to a bad backend."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neurorg_core.config import REPO_ROOT, Config  # noqa: E402
from neurorg_core.devices import (DEVICE_NODES, Accelerator, accelerator_batch_size, resolve_backend,  # noqa: E402
                                  resolve_jit, resolve_precision)
from neurorg_core.errors import NeuroRGError  # noqa: E402
from neurorg_core.inference import Predictor, PredictorCache, default_batch_size  # noqa: E402
from neurorg_core.kerasrun import BF16_TOLERANCE, compute_dtypes, with_precision  # noqa: E402
from neurorg_core.plate_inference import ScoreOptions  # noqa: E402

H200 = Accelerator("gpu", "NVIDIA H200", 141 * 2**30, bf16=True)
T4 = Accelerator("gpu", "Tesla T4", 16 * 2**30, bf16=False)


def no_gpu() -> tuple:
    return ()


def one_gpu() -> tuple:
    return (H200,)


def _crops(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    scale = np.linspace(0.2, 1.0, n, dtype=np.float32)[:, None, None, None]
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32) * scale


def test_resolve_backend_auto_follows_the_device_query():
    assert resolve_backend("auto", accelerators=no_gpu) == "litert"
    assert resolve_backend("auto", accelerators=one_gpu) == "keras"
    asked = []
    assert resolve_backend("litert", accelerators=lambda: asked.append(1) or (H200,)) == "litert"
    assert resolve_backend("keras", accelerators=no_gpu) == "keras"
    assert asked == []                                  # an explicit choice asks no device
    assert resolve_backend("auto", "bfloat16", accelerators=no_gpu) == "keras"    # bf16 is Keras only
    with pytest.raises(NeuroRGError, match="LiteRT runs float32"):
        resolve_backend("litert", "bfloat16")
    with pytest.raises(NeuroRGError, match=r"backend 'gpu' is not one of auto, litert, keras"):
        resolve_backend("gpu")
    with pytest.raises(NeuroRGError, match=r"precision 'fp16' is not one of float32, bfloat16"):
        resolve_backend("keras", "fp16")


def test_training_precision_and_jit_follow_the_device():
    assert resolve_precision("auto", ()) == "float32"                 # CPU: bf16 off by default
    assert resolve_precision("auto", (H200,)) == "bfloat16"
    assert resolve_precision("auto", (H200, T4)) == "float32"         # every device must compute bf16
    assert resolve_precision("bfloat16", ()) == "bfloat16"            # asked for: honoured
    assert resolve_jit(None, "tensorflow", ()) is False               # XLA compile costs minutes on 2 cores
    assert resolve_jit(None, "tensorflow", (H200,)) is True
    assert resolve_jit(None, "torch", (H200,)) is True
    assert resolve_jit(None, "jax", ()) is True                       # JAX without jit runs eagerly
    assert resolve_jit(False, "jax", ()) is False


def test_batches_are_sized_for_the_device():
    assert accelerator_batch_size(456, Accelerator("gpu", "x", 16 * 2**30)) == 64
    assert accelerator_batch_size(456, H200) == 256                   # more memory, bigger batches (4x cap)
    assert accelerator_batch_size(224, H200) == 512                   # capped
    assert accelerator_batch_size(1200, Accelerator("gpu", "x", None)) == 9
    assert default_batch_size(64) == 16 and default_batch_size(1200) == 1   # CPU: unchanged


def test_no_accelerator_device_node_means_no_gpu_and_no_import():
    """On a machine without /dev/nvidia* (and the like) ``auto`` decides without importing a backend."""
    code = ("import sys; from neurorg_core.devices import visible_accelerators as v; "
            "print(v(), 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True).stdout.split()
    if any(glob.glob(p) for p in DEVICE_NODES):       # a GPU machine: the backend was asked
        assert out[1:] != ["False", "False"] or out[0] == "()"
    else:
        assert out == ["()", "False", "False"]


def test_a_gpu_machine_whose_keras_backend_sees_no_gpu_says_so(monkeypatch, tmp_path, caplog):
    """The CPU install (or KERAS_BACKEND unset) on a GPU machine: ``auto`` runs LiteRT on the CPU,
    and the log and the device line say why (a device file stands in for /dev/nvidia0; the
    CPU build of TensorFlow is really asked, and sees no GPU)."""
    from neurorg_core import devices

    monkeypatch.setattr(devices, "DEVICE_NODES", (str(tmp_path / "nvidia[0-9]*"),))
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert devices.describe_device(()).startswith("keras tensorflow on CPU (")
    assert devices.unseen_accelerator_note() is None and "device files" not in devices.describe_device(())
    node = tmp_path / "nvidia0"
    node.write_bytes(b"")
    with caplog.at_level("WARNING", logger="neurorg_core.devices"):
        assert devices.visible_accelerators() == ()
        assert resolve_backend("auto") == "litert"
    assert f"accelerator device files exist ({node}) but Keras's tensorflow backend sees no GPU" in caplog.text
    line = devices.describe_device(())
    assert "sees no GPU" in line and "requirements-gpu.txt" in line and "KERAS_BACKEND=jax" in line


def test_unknown_keras_backend_is_named(monkeypatch):
    from neurorg_core.devices import visible_accelerators

    monkeypatch.setenv("KERAS_BACKEND", "mxnet")
    with pytest.raises(NeuroRGError, match=r"KERAS_BACKEND='mxnet'; expected one of tensorflow, jax, torch"):
        visible_accelerators()


def test_predictor_auto_runs_litert_without_a_gpu_and_keras_with_one(tiny_ensemble):
    cpu = Predictor(tiny_ensemble, accelerators=no_gpu)
    gpu = Predictor(tiny_ensemble, accelerators=one_gpu)
    assert cpu.backend == "litert" and len(cpu.litert_files) == 2
    assert gpu.backend == "keras" and gpu.litert_files == []
    assert gpu.batch_size == accelerator_batch_size(32, H200) == 512
    x = _crops(37)
    p_cpu, p_gpu = cpu.predict(x), gpu.predict(x)
    assert p_gpu.shape == (2, 37, 6)
    assert np.abs(p_cpu - p_gpu).max() < 1e-4                         # float32: Keras == LiteRT
    assert p_gpu.std(1).max() > 1e-3                                  # not a comparison of constants
    cache = PredictorCache()
    assert cache.predictor(tiny_ensemble, "auto", accelerators=one_gpu).backend == "keras"
    assert cache.predictor(tiny_ensemble, "auto", accelerators=no_gpu).backend == "litert"


def test_keras_predictions_do_not_depend_on_the_batch(tiny_ensemble):
    """The Keras path pads a short last batch to a fixed shape (one compiled shape on the device)."""
    x = _crops(11, seed=4)
    whole = Predictor(tiny_ensemble, backend="keras", batch_size=16).predict(x)
    small = Predictor(tiny_ensemble, backend="keras", batch_size=4).predict(x)
    np.testing.assert_allclose(small, whole, atol=1e-6)


def test_bf16_keeps_the_input_layers_and_head_float32_and_stays_within_tolerance():
    """On the shipped demo member (trained weights: the tiny test models' sharpened heads and
    1e-3 normalisation amplify any rounding)."""
    from neurorg_core.model import load_bundle, load_member_model

    model = load_member_model(load_bundle(REPO_ROOT / "data" / "models" / "demo" / "ensemble").members[0])
    half = with_precision(model, "bfloat16")
    assert with_precision(model, "float32") is model
    dtypes = compute_dtypes(half)
    assert dtypes["predictions"] == "float32"
    assert {d for n, d in dtypes.items() if "normalization" in n} == {"float32"}
    assert sum(d == "bfloat16" for d in dtypes.values()) > 50       # the convolutions run in bf16
    for a, b in zip(model.get_weights(), half.get_weights()):
        np.testing.assert_array_equal(a, b)                           # same weights, float32 variables
    x = _crops(24, seed=2, size=64) * 0.3                             # fluorescence is dim
    p32 = np.asarray(model.predict_on_batch(x))
    p16 = np.asarray(half.predict_on_batch(x))
    diff = float(np.abs(p32 - p16).max())
    assert 0 < diff <= BF16_TOLERANCE                                 # bf16 did run, and stayed close
    np.testing.assert_allclose(p16.sum(-1), 1.0, atol=1e-5)


def test_score_options_and_config_refuse_a_bad_backend(monkeypatch):
    assert ScoreOptions().backend == "auto" and ScoreOptions().precision == "float32"
    with pytest.raises(NeuroRGError, match="backend 'cuda' is not one of auto, litert, keras"):
        ScoreOptions(backend="cuda")
    with pytest.raises(NeuroRGError, match="LiteRT runs float32"):
        ScoreOptions(backend="litert", precision="bfloat16")
    assert ScoreOptions.of_run({"precision": "bfloat16"}).precision == "bfloat16"
    assert ScoreOptions.of_run({"backend": "keras"}).backend == "keras"   # a re-score runs alike
    assert ScoreOptions.of_run({}).backend == "auto"                      # runs stored before it was recorded
    monkeypatch.setenv("NEURORG_BACKEND", "keras")
    assert Config().backend == "keras"
    monkeypatch.setenv("NEURORG_BACKEND", "gpu")
    with pytest.raises(NeuroRGError, match=r"'gpu' \(NEURORG_BACKEND\) is not one of auto, litert, keras"):
        Config()


@pytest.mark.parametrize("command", ["score", "evaluate", "calibrate-fit"])
def test_cli_backend_values(command, capsys):
    from neurorg_core.cli import build_parser

    parser = build_parser()
    base = {"score": ["score", "p", "--plate-map", "m"], "evaluate": ["evaluate", "--plates", "p", "--model", "m"],
            "calibrate-fit": ["calibrate-fit", "--plates", "p", "--model", "m"]}[command]
    for value in ("auto", "litert", "keras"):
        assert parser.parse_args([*base, "--backend", value]).backend == value
    assert parser.parse_args(base).backend is None                   # then NEURORG_BACKEND, else auto
    with pytest.raises(SystemExit) as info:
        parser.parse_args([*base, "--backend", "gpu"])
    assert info.value.code == 2
    assert "--backend: invalid choice: 'gpu' (choose from 'auto', 'litert', 'keras')" in capsys.readouterr().err


def test_cli_refuses_bf16_on_litert_with_one_line(tmp_path, capsys):
    from neurorg_core.cli import main

    rc = main(["score", str(tmp_path), "--plate-map", str(tmp_path / "m.csv"), "--backend", "litert",
               "--precision", "bfloat16"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: bfloat16 inference runs on the keras backend" in err and "Traceback" not in err


def test_evaluate_runs_the_backend_it_is_given(tiny_ensemble, tmp_path, capsys):
    """``evaluate --backend`` reaches the predictor: the engine that ran is printed, and the two
    engines give the same well calls on an unseen plate."""
    from neurorg_core.cli import main
    from neurorg_core.synth import write_synthetic_plates

    plate = write_synthetic_plates(tmp_path / "plates", seed=7, n_plates=1, n_fields=1, size=64)[0]
    ensembles = {}
    for backend in ("keras", "litert"):
        report = tmp_path / f"{backend}.json"
        assert main(["evaluate", "--plates", str(plate), "--model", str(tiny_ensemble.path),
                     "--backend", backend, "--json", str(report)]) == 0
        assert f"inference: {backend} (float32, batch " in capsys.readouterr().out
        ensembles[backend] = json.loads(report.read_text())["unseen"]["ensemble"]
    assert ensembles["keras"]["n_wells"] == 60
    assert ensembles["keras"]["well_confusion"] == ensembles["litert"]["well_confusion"]
