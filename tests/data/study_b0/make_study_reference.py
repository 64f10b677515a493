"""Make the reference outputs the study-import tests compare against, with the real efficientnet_pytorch.

Run with a Python that has torch and efficientnet_pytorch (never the project's environment: CI has
no torch). The plate comes first, from the project's own environment:

    python -m neurorg_core synth --out /tmp/study_ref --seed 15 --layout npy --fields 5 --size 72
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 efficientnet_pytorch==0.7.1 numpy
    .venv-torch/bin/python tests/data/study_b0/make_study_reference.py --plate /tmp/study_ref/plate_01 \
        --out tests/data/study_b0

For each fold it builds ``EfficientNet.from_name('efficientnet-b0', num_classes=6)`` (the study's
network; ``from_pretrained`` differs only by the ImageNet weights it downloads), gives it random
weights, then makes it *see data*: a freshly initialised network in eval mode gives almost the same
probabilities for any input (its batch-norm statistics are still 0 / 1), so a comparison on it could
not fail. Each fold therefore

1. draws random kernels: random signs (Rademacher) scaled to PyTorch's default initialisation's SD,
   and random batch-norm gains / biases (two values each; they compress ~20x, so four B0 folds fit
   the repository in a few MB, and a transposed or misplaced tensor still changes every output);
2. computes exact batch-norm statistics on the plate's fields in train mode (cumulative averages,
   ``momentum=None``);
3. trains its classifier head a few SGD steps on its own random half of the wells' labels, so
   P(control) follows the class and the wells' calls really differ.

It then writes, in ``--out``: the fold state_dicts (``torch.save(model.state_dict(), path)``, as
the study did), ``normalize_parameters.pkl`` (the plate's per-channel mean / std in [0, 1] units, as
numpy arrays), small files in torch's other formats (``format_samples``), the first ``--wells-per-class`` wells of each class as a small ``{class}_Plate_1.npy``
release plate with its CSVs and plate map, and ``reference.json``: every member's softmax
probabilities on every field of that small plate, computed exactly as the study's evaluation does
(albumentations ``Normalize``: (x - 255 mean) / (255 std) in float32, then the network in eval
mode). By default the binary files are packed into ``study_b0.tar.xz``; ``--no-archive`` leaves them
as files (the B5 check in the README).
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import importlib.metadata
import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from efficientnet_pytorch import EfficientNet

_NPY = re.compile(r"^(\d+)_Plate_(\d+)\.npy$")


def read_plate(folder: Path) -> tuple[list[np.ndarray], list[str], list[int], list[dict], list[str]]:
    """Every field of an npy release plate (class order, then file order), its well and class, and
    the plate map's rows and header."""
    fields, wells, classes = [], [], []
    files = sorted((p for p in folder.iterdir() if _NPY.match(p.name)), key=lambda p: int(_NPY.match(p.name)[1]))
    for path in files:
        arr = np.load(path)
        with open(path.with_suffix(".csv"), newline="") as f:
            rows = [r["well"] for r in csv.DictReader(f)]
        assert len(rows) == len(arr), path
        fields += list(arr)
        wells += rows
        classes += [int(_NPY.match(path.name)[1])] * len(arr)
    with open(folder / "platemap.csv", newline="") as f:
        reader = csv.DictReader(f)
        platemap = list(reader)
        header = list(reader.fieldnames or [])
    return fields, wells, classes, platemap, header


def normalise(fields: list[np.ndarray], mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """albumentations.Normalize(mean, std) (max_pixel_value 255) on uint8 fields, float32, NCHW."""
    m = np.asarray(mean, np.float32) * 255.0
    denominator = np.reciprocal(np.asarray(std, np.float32) * 255.0)
    x = np.stack(fields).astype(np.float32)
    x -= m
    x *= denominator
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random-sign kernels at the default initialisation's SD, two-valued BN gains / biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                sd = float(p.std()) if p.numel() > 1 else 0.1
                p.copy_((torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).float() * sd)
            elif name.endswith("weight"):          # batch-norm gains
                p.copy_(torch.where(torch.rand(p.shape, generator=gen) < 0.5, 0.8, 1.2))
            else:                                  # batch-norm and SE / classifier biases
                p.copy_(torch.where(torch.rand(p.shape, generator=gen) < 0.5, -0.1, 0.1))


def batch_norm_statistics(model: torch.nn.Module, x: torch.Tensor, batch: int) -> None:
    """Exact batch-norm statistics over ``x`` (train-mode passes, cumulative averages)."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    model.train()
    with torch.no_grad():
        for a in range(0, len(x), batch):
            model(x[a:a + batch])
    model.eval()


def features(model: EfficientNet, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Pooled features before the classifier, eval mode."""
    out = []
    with torch.no_grad():
        for a in range(0, len(x), batch):
            out.append(torch.flatten(model._avg_pooling(model.extract_features(x[a:a + batch])), 1))
    return torch.cat(out)


def train_head(model: EfficientNet, feats: torch.Tensor, labels: torch.Tensor, steps: int, gen: torch.Generator) -> None:
    """A few SGD steps of the classifier head (the study's SGD: momentum 0.9; lr 0.03)."""
    fc = model._fc
    opt = torch.optim.SGD(fc.parameters(), lr=0.03, momentum=0.9)
    for _ in range(steps):
        pick = torch.randint(0, len(feats), (min(64, len(feats)),), generator=gen)
        loss = torch.nn.functional.cross_entropy(fc(feats[pick]), labels[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()


def probabilities(model: torch.nn.Module, x: torch.Tensor, batch: int) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([torch.softmax(model(x[a:a + batch]), 1).numpy() for a in range(0, len(x), batch)])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_plate(fields, wells, classes, platemap, header, per_class: int) -> tuple[dict[str, bytes], list[int]]:
    """The first ``per_class`` wells of each class as an npy release plate: file name -> bytes,
    and the indices of the fields kept."""
    keep_wells: list[str] = []
    for k in sorted(set(classes)):
        keep_wells += list(dict.fromkeys(w for w, c in zip(wells, classes) if c == k))[:per_class]
    files: dict[str, bytes] = {}
    kept: list[int] = []
    for k in sorted(set(classes)):
        idx = [i for i, (w, c) in enumerate(zip(wells, classes)) if c == k and w in keep_wells]
        buf = io.BytesIO()
        np.save(buf, np.stack([fields[i] for i in idx]))
        files[f"plate/{k}_Plate_1.npy"] = buf.getvalue()
        files[f"plate/{k}_Plate_1.csv"] = ("well\n" + "".join(f"{wells[i]}\n" for i in idx)).encode()
        kept += idx
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r for r in platemap if r["Metadata_Well"] in keep_wells)
    files["plate/platemap.csv"] = out.getvalue().encode()
    return files, kept


def format_samples() -> tuple[dict[str, bytes], dict]:
    """Small files in torch's other shapes, for the reader's tests: a state_dict of views and
    dtypes (with the values it must read), a DataParallel and a wrapped training checkpoint, a
    whole pickled model, a legacy-format file and a TorchScript archive. (``main`` adds fold 0 with
    a 1000-class head: a wrong class count.)"""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    zoo = collections.OrderedDict(
        contiguous=base, transposed=base.t(), sliced=base[1:3, 2:5], strided=base[:, ::2],
        half=(base / 7).half(), bfloat16=(base / 7).bfloat16(), double=(base / 7).double(),
        int64=torch.arange(5), bool=torch.tensor([True, False, True]), scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3))
    small = collections.OrderedDict(weight=base[:2, :3].clone(), bias=torch.tensor([0.5, -0.5]))

    def saved(obj, **kw) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        return buf.getvalue()

    script = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), script)
    files = {
        "formats/tensor_zoo": saved(zoo),
        "formats/dataparallel": saved(collections.OrderedDict((f"module.{k}", v) for k, v in small.items())),
        "formats/training_checkpoint": saved({"epoch": 3, "model_state_dict": small, "best_acc": 0.9}),
        "formats/whole_model": saved(torch.nn.Linear(3, 2)),
        "formats/legacy": saved(small, _use_new_zipfile_serialization=False),
        "formats/torchscript": script.getvalue(),
    }
    expected = {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                    "values": v.float().tolist() if v.is_floating_point() else v.tolist()}
                for k, v in zoo.items()}
    return files, expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plate", required=True, type=Path, help="npy release plate folder (synth --layout npy)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--arch", default="efficientnet-b0")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--wells-per-class", type=int, default=2, help="wells of each class in the small plate")
    ap.add_argument("--bn-fields", type=int, default=0, help="fields for batch-norm statistics (0: all)")
    ap.add_argument("--head-steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-archive", action="store_true", help="write the files instead of study_b0.tar.xz")
    args = ap.parse_args()
    torch.set_num_threads(2)

    fields, wells, classes, platemap, header = read_plate(args.plate)
    size = fields[0].shape[0]
    sums = sum(f.reshape(-1, 3).sum(0, dtype=np.float64) for f in fields) / 255.0
    squares = sum((f.reshape(-1, 3).astype(np.float64) ** 2).sum(0) for f in fields) / 255.0 ** 2
    n_px = len(fields) * fields[0].shape[0] * fields[0].shape[1]
    mean = sums / n_px
    std = np.sqrt(squares / n_px - mean ** 2)

    def x_of(indices) -> torch.Tensor:
        return normalise([fields[i] for i in indices], mean, std)

    labels = torch.tensor(classes)
    rng = np.random.default_rng(args.seed)
    bn_idx = (np.arange(len(fields)) if not args.bn_fields else
              np.sort(rng.choice(len(fields), args.bn_fields, replace=False)))
    plate_files, kept = small_plate(fields, wells, classes, platemap, header, args.wells_per_class)
    x_ref = x_of(kept)

    files: dict[str, bytes] = dict(plate_files)
    samples, tensor_zoo = format_samples()
    files.update(samples)
    buf = io.BytesIO()
    pickle.dump({"mean": np.asarray(mean), "std": np.asarray(std)}, buf)
    files["normalize_parameters.pkl"] = buf.getvalue()
    probs, state_dicts = [], []
    for fold in range(args.folds):
        gen = torch.Generator().manual_seed(args.seed * 100 + fold)
        torch.manual_seed(args.seed * 100 + fold)
        model = EfficientNet.from_name(args.arch, num_classes=6)
        randomise(model, gen)
        batch_norm_statistics(model, x_of(bn_idx), args.batch)
        half = np.sort(rng.choice(bn_idx, max(1, len(bn_idx) // 2), replace=False))
        if args.head_steps:
            train_head(model, features(model, x_of(half), args.batch), labels[half], args.head_steps, gen)
        model.eval()
        probs.append(probabilities(model, x_ref, args.batch))
        name = f"state_dict_{args.arch.replace('-', '_')}_Neuroinflammation_test_{fold}"
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        files[name] = buf.getvalue()
        state_dicts.append({"file": name, "sha256": sha256(buf.getvalue())})
        if fold == 0:   # an ImageNet-style head: the same backbone with 1000 classes (a wrong class count)
            wrong = collections.OrderedDict(model.state_dict())
            wrong["_fc.weight"] = (torch.randint(0, 2, (1000, wrong["_fc.weight"].shape[1]), generator=gen) * 2 - 1
                                   ).float() * 0.02
            wrong["_fc.bias"] = torch.zeros(1000)
            buf = io.BytesIO()
            torch.save(wrong, buf)
            files[f"formats/{args.arch.replace('-', '_')}_1000_classes"] = buf.getvalue()
        p0 = probs[-1][:, 0]
        logits = np.log(np.clip(probs[-1], 1e-30, 1.0))
        print(f"fold {fold}: log-probability range {logits.min():.1f}..0, P(control) per field "
              f"{p0.min():.3f}..{p0.max():.3f}, calls "
              f"{np.bincount(probs[-1].argmax(1), minlength=6).tolist()}")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.arch.replace("efficientnet-", "study_")
    archive = None
    if args.no_archive:
        for name, data in files.items():
            (args.out / name).parent.mkdir(parents=True, exist_ok=True)
            (args.out / name).write_bytes(data)
    else:
        tar_buf = io.BytesIO()
        with tarfile.open(fileobj=tar_buf, mode="w:xz", preset=9) as tar:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        (args.out / f"{stem}.tar.xz").write_bytes(tar_buf.getvalue())
        archive = {"file": f"{stem}.tar.xz", "sha256": sha256(tar_buf.getvalue())}
    reference = {
        "what": "softmax probabilities of efficientnet_pytorch on the small plate's fields, one list per fold",
        "generator": "tests/data/study_b0/make_study_reference.py",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "versions": {p: importlib.metadata.version(p) for p in ("torch", "efficientnet_pytorch", "numpy")},
        "arch": args.arch, "input_size": size,
        "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        "archive": archive,
        "state_dicts": state_dicts,
        "tensor_zoo": tensor_zoo,
        "fields": [{"well": wells[i], "field": wells[:i + 1].count(wells[i]), "class": classes[i]}
                   for i in kept],
        "probabilities": [[[float(f"{v:.9g}") for v in row] for row in p] for p in probs],
    }
    (args.out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {len(files)} files and reference.json to {args.out}")


if __name__ == "__main__":
    main()
