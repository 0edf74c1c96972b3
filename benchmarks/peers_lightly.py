"""lightly's SimCLR, BYOL and MoCo v2 under a wall-clock budget: the rows of
``benchmarks.peers`` that need lightly. They run in the bench environment that
``bash benchmarks/make_bench_env.sh`` makes (``.venv-bench/``), never in the project's own:

    .venv-bench/bin/python -m benchmarks.peers_lightly --check      # versions, one step each
    .venv-bench/bin/python -m benchmarks.peers_lightly --data DIR --method simclr \\
        --backbone resnet18 --budget-seconds 300 --out DIR

``--data`` holds ``fit.npy`` (training images), ``probe.npy`` and ``test.npy`` (the images
whose features the probes judge), uint8 ``(n, 32, 32, 3)``; ``--out`` receives
``<level>_probe.npy``, ``<level>_test.npy`` and ``info.json`` (seconds, steps, versions and
the lightly parts that ran). ``benchmarks.peers`` writes the one and reads the other.

The recipe is lightly's CIFAR-10 benchmark (``cifar10_benchmark.py`` in lightly's docs):
its transforms (SimCLR's with ``cj_strength=0.5``, no blur, also for MoCo; BYOL's two
asymmetric views, no blur), SGD with momentum 0.9, weight decay 5e-4 and lr 0.06 per 128
images, batch 128, momentum 0.99 for the BYOL and MoCo targets, MoCo's 4,096-entry memory
bank at temperature 0.1 with split BatchNorm (8 splits) in its ResNet. Two changes: the
cosine LR schedule runs over the wall-clock budget instead of over epochs, and the
projection heads end in 64 outputs (the size of dimlearn's code) instead of 128 or 256.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

METHODS = {"simclr": "SimCLR", "byol": "BYOL", "moco": "MoCo v2"}
BACKBONES = {"conv": "dimlearn ConvEncoder", "resnet18": "ResNet-18 (CIFAR)"}
CODE_DIM = 64
LR_PER_128 = 0.06
MOMENTUM = 0.99  # the target networks' EMA (BYOL, MoCo)
_STUB = None  # keeps the torchvision op declarations alive (see import_torchvision)


def import_torchvision() -> dict:
    """Import torchvision; returns its version and whether its compiled ops loaded.

    PyPI's torchvision wheels are built against the CUDA build of torch. With the CPU build
    their ``_C.so`` does not load (it links ``libtorch_cuda.so``), and ``import torchvision``
    then fails at ``register_fake("torchvision::nms")`` (pytorch/vision#9085). Declaring the
    schemas of the two ops that registration names lets the import go through; the
    detection ops stay unusable, and lightly's transforms, which are PIL and tensor code,
    work."""
    global _STUB
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            raise ImportError("torchvision is absent: make the bench env (make_bench_env.sh)")
        loaded = False
        for library in Path(spec.origin).parent.glob("_C.*"):
            try:
                torch.ops.load_library(str(library))
                loaded = True
            except OSError:
                pass
        if not loaded and _STUB is None:
            _STUB = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                _STUB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    return {"torchvision": torchvision.__version__, "torchvision_compiled_ops": _STUB is None}


def versions() -> dict:
    """What ran: torch, torchvision (and its compiled ops), lightly, numpy, Python."""
    import platform

    info = import_torchvision()
    import lightly

    return {
        "lightly": lightly.__version__,
        **info,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "executable": sys.executable,
    }


class ResNet18(nn.Module):
    """lightly's CIFAR ResNet-18 (``ResNetGenerator``: a 3x3 stem at stride 1, no
    max-pool) without its classifier: 512 features after global average pooling. Its own
    forward is used (lightly's benchmark drops the stem's ReLU by rebuilding it as a
    Sequential of its children)."""

    part = "models.ResNetGenerator('resnet-18'{})"

    def __init__(self, image_shape, num_splits: int = 0):
        super().__init__()
        from lightly.models import ResNetGenerator

        self.net = ResNetGenerator("resnet-18", num_splits=num_splits)
        self.net.linear = nn.Identity()
        self.dim = 512
        self.part = self.part.format(f", num_splits={num_splits}" if num_splits else "")

    def forward(self, x):
        return self.net(x)

    def levels(self, x) -> dict:
        return {"backbone": self.net(x)}


class DimlearnConv(nn.Module):
    """dimlearn's default image encoder (``dimlearn.infomax.build_module`` with the
    defaults) up to its fc layer (1,024 features at width 64); the projection head takes
    the place of its code layer. ``levels`` also gives the last conv layer, flattened
    (dimlearn's ``feature_level="conv"``, 4,096 features on 32x32 images)."""

    part = "dimlearn.networks.ConvEncoder (defaults) to its fc layer"

    def __init__(self, image_shape, num_splits: int = 0):
        super().__init__()
        from dimlearn import DeepInfomaxTransformer
        from dimlearn.infomax import build_module
        from dimlearn.inputs import resolve_layout
        from dimlearn.settings import Settings

        config = Settings.from_params(DeepInfomaxTransformer().get_params())
        self.encoder = build_module(
            config, resolve_layout(tuple(image_shape), None, "auto")
        ).encoder
        self.encoder.to_code = nn.Identity()  # the projection head replaces it
        self.dim = self.encoder.feature_dims["fc"]

    def forward(self, x):
        return self.encoder.features(x, "fc")

    def levels(self, x) -> dict:
        return {
            "backbone": self.encoder.features(x, "fc"),
            "conv": self.encoder.features(x, "conv"),
        }


class Peer(nn.Module):
    """One method on one backbone: ``loss(x0, x1)`` trains it, ``levels(x)`` gives the
    features (``code``: the projection head's 64 outputs; ``backbone``; ``conv``)."""

    def __init__(self, method: str, backbone: str, image_shape):
        super().__init__()
        import_torchvision()  # before lightly: lightly.loss imports torchvision.ops
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import (
            BYOLPredictionHead,
            BYOLProjectionHead,
            MoCoProjectionHead,
            SimCLRProjectionHead,
        )
        from lightly.models.utils import deactivate_requires_grad

        self.method = method
        splits = 8 if method == "moco" and backbone == "resnet18" else 0
        self.backbone = {"conv": DimlearnConv, "resnet18": ResNet18}[backbone](image_shape, splits)
        d = self.backbone.dim
        parts = [self.backbone.part]
        if method == "simclr":
            self.head = SimCLRProjectionHead(d, 512, CODE_DIM)
            self.criterion = NTXentLoss()
            parts += [f"SimCLRProjectionHead({d}, 512, {CODE_DIM})", "NTXentLoss(temperature=0.5)"]
        elif method == "byol":
            self.head = BYOLProjectionHead(d, 1024, CODE_DIM)
            self.predictor = BYOLPredictionHead(CODE_DIM, 1024, CODE_DIM)
            self.criterion = NegativeCosineSimilarity()
            parts += [
                f"BYOLProjectionHead({d}, 1024, {CODE_DIM})",
                f"BYOLPredictionHead({CODE_DIM}, 1024, {CODE_DIM})",
                "NegativeCosineSimilarity",
            ]
        elif method == "moco":
            self.head = MoCoProjectionHead(d, 512, CODE_DIM)
            self.criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, CODE_DIM))
            parts += [
                f"MoCoProjectionHead({d}, 512, {CODE_DIM})",
                f"NTXentLoss(temperature=0.1, memory_bank_size=(4096, {CODE_DIM}))",
                "batch_shuffle/batch_unshuffle",
            ]
        else:
            raise ValueError(f"unknown method {method!r}")
        if method in ("byol", "moco"):
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.head_momentum = copy.deepcopy(self.head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.head_momentum)
            parts += [f"update_momentum(m={MOMENTUM})", "deactivate_requires_grad"]
        self.parts = parts

    def code(self, x):
        return self.head(self.backbone(x))

    @torch.no_grad()
    def _target(self, x):
        return self.head_momentum(self.backbone_momentum(x))

    def loss(self, x0, x1):
        from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum

        if self.method == "simclr":
            return self.criterion(self.code(x0), self.code(x1))
        update_momentum(self.backbone, self.backbone_momentum, m=MOMENTUM)
        update_momentum(self.head, self.head_momentum, m=MOMENTUM)
        if self.method == "byol":
            p0, p1 = self.predictor(self.code(x0)), self.predictor(self.code(x1))
            z0, z1 = self._target(x0), self._target(x1)
            return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

        def step(query, key):  # MoCo, symmetric as in lightly's benchmark
            key, order = batch_shuffle(key)
            return self.criterion(self.code(query), batch_unshuffle(self._target(key), order))

        return 0.5 * (step(x0, x1) + step(x1, x0))

    def levels(self, x) -> dict:
        levels = self.backbone.levels(x)
        levels["code"] = self.head(levels["backbone"])
        return levels


def make_transform(method: str):
    """lightly's CIFAR-10 augmentations for ``method``, and how they were called."""
    import_torchvision()
    from lightly.transforms import BYOLTransform, SimCLRTransform
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    if method == "byol":
        call = (
            "BYOLTransform(BYOLView1Transform(input_size=32, gaussian_blur=0.0), "
            "BYOLView2Transform(input_size=32, gaussian_blur=0.0))"
        )
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
            view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0),
        ), call
    call = "SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)"
    return SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0), call


class TwoViews(torch.utils.data.Dataset):
    """Two augmented views of each uint8 image, through PIL as lightly's datasets do."""

    def __init__(self, X, transform):
        self.X, self.transform = X, transform

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.X[i]))


def train(peer, X, transform, budget_s, *, batch_size, seed, precision, workers) -> dict:
    """SGD under a wall-clock budget, the cosine LR schedule over the budget; stops at the
    end of the first step past it. Counts the augmentation, as the peers' pipeline."""
    batch_size = min(batch_size, len(X) // 8 * 8)  # whole batches, divisible by MoCo's splits
    loader = torch.utils.data.DataLoader(
        TwoViews(X, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    lr = LR_PER_128 * batch_size / 128
    params = [p for p in peer.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    peer.train()
    steps, losses, start = 0, [], time.perf_counter()
    done = False
    while not done:
        for x0, x1 in loader:
            elapsed = time.perf_counter() - start
            for group in optimiser.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget_s, 1.0)))
            with autocast:
                loss = peer.loss(x0, x1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            steps += 1
            losses.append(loss.item())
            if steps % 50 == 0:
                print(f"    step {steps}: loss {np.mean(losses[-50:]):.4f}", flush=True)
            if time.perf_counter() - start >= budget_s:
                done = True
                break
    seconds = time.perf_counter() - start
    return {
        "train_s": seconds,
        "steps": steps,
        "epochs": steps * batch_size / len(X),
        "batch_size": batch_size,
        "lr": lr,
        "final_loss": float(np.mean(losses[-10:])),
    }


@torch.no_grad()
def features(peer, X, batch_size: int = 256) -> dict:
    """Every level's features of uint8 images, in eval mode, normalised as lightly's
    test transform does (ToTensor, then ImageNet mean and std)."""
    import_torchvision()
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    mean = torch.tensor(IMAGENET_NORMALIZE["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZE["std"]).view(1, 3, 1, 1)
    peer.eval()
    out: dict = {}
    for start in range(0, len(X), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(X[start : start + batch_size]))
        x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
        for level, Z in peer.levels(x).items():
            out.setdefault(level, []).append(Z.float().numpy())
    return {level: np.concatenate(parts) for level, parts in out.items()}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    info = versions()
    data = Path(args.data)
    X_fit = np.load(data / "fit.npy")
    torch.manual_seed(args.seed)
    peer = Peer(args.method, args.backbone, X_fit.shape[1:])
    transform, call = make_transform(args.method)
    print(f"  {METHODS[args.method]}, {BACKBONES[args.backbone]}: {len(X_fit)} images", flush=True)
    trained = train(
        peer,
        X_fit,
        transform,
        args.budget_seconds,
        batch_size=args.batch_size,
        seed=args.seed,
        precision=args.precision,
        workers=args.workers,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for split in ("probe", "test"):
        for level, Z in features(peer, np.load(data / f"{split}.npy")).items():
            np.save(out / f"{level}_{split}.npy", Z)
    payload = {
        "method": args.method,
        "backbone": args.backbone,
        **trained,
        "feature_s": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "loader_workers": args.workers,
        "versions": info,
        "lightly_parts": [call, *peer.parts],
        "optimiser": f"SGD(lr={trained['lr']:g}, momentum=0.9, weight_decay=5e-4), cosine over "
        f"{args.budget_seconds:g} s",
    }
    (out / "info.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def check() -> dict:
    """Versions, and one training step and one feature pass of every method on every
    backbone on 16 random images: proof that the bench environment works."""
    torch.set_num_threads(2)
    info = versions()
    X = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    for method in METHODS:
        for backbone in BACKBONES:
            torch.manual_seed(0)
            peer = Peer(method, backbone, X.shape[1:])
            transform, _ = make_transform(method)
            trained = train(
                peer, X, transform, 1e-9, batch_size=16, seed=0, precision="float32", workers=0
            )
            dims = {level: Z.shape[1] for level, Z in features(peer, X[:4]).items()}
            assert np.isfinite(trained["final_loss"]), (method, backbone)
            print(f"{method} {backbone}: loss {trained['final_loss']:.3f}, features {dims}")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="versions and one step of each")
    parser.add_argument("--versions", action="store_true", help="print the versions as JSON")
    parser.add_argument("--data", help="folder with fit.npy, probe.npy and test.npy")
    parser.add_argument("--out", help="folder for the features and info.json")
    parser.add_argument("--method", choices=sorted(METHODS))
    parser.add_argument("--backbone", choices=sorted(BACKBONES))
    parser.add_argument("--budget-seconds", type=float, default=300.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    args = parser.parse_args(argv)
    if args.versions:
        print(json.dumps(versions()))
        return 0
    if args.check:
        print(json.dumps(check(), indent=2))
        return 0
    if not (args.data and args.out and args.method and args.backbone):
        parser.error("--data, --out, --method and --backbone are needed (or --check)")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
