"""What the benchmark commands share: data, machine facts, feature probes, result files."""

from __future__ import annotations

import copy
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dimlearn.infomax import build_module
from dimlearn.inputs import ArrayBatches
from dimlearn.settings import Settings

DATA_DIR = Path(os.environ.get("DIMLEARN_DATA", Path(__file__).parents[2] / "shared" / "data"))
RESULTS_DIR = Path(__file__).parent / "results"
FILES = {"cifar10": "cifar10.npz", "fashion_mnist": "fashion_mnist.npz", "mnist": "mnist.npz"}
DATASETS = ("digits", *FILES)


class DatasetMissing(RuntimeError):
    """The dataset's file is not where the benchmark looks for it."""


def load_dataset(name: str, n_train: int | None, n_test: int | None, seed: int):
    """``(X_train, y_train, X_test, y_test, class_names)``, random subsets of the given sizes.

    digits comes with scikit-learn (a stratified 75/25 split, as 8x8 images); the others are
    read from ``DIMLEARN_DATA`` (default ``../shared/data`` beside the repository).
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X_tr, X_te, y_tr, y_te = train_test_split(
            X.reshape(-1, 8, 8), y, test_size=0.25, random_state=seed, stratify=y
        )
        names = [str(i) for i in range(10)]
    else:
        path = DATA_DIR / FILES[name]
        if not path.exists():
            raise DatasetMissing(
                f"{path} not found: set DIMLEARN_DATA to the folder holding {FILES[name]}"
            )
        with np.load(path) as d:
            X_tr, y_tr, X_te, y_te = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
            names = list(d["class_names"]) if "class_names" in d else [str(i) for i in range(10)]
    rng = np.random.default_rng(seed)

    def subset(X, y, n):
        if n is None or n >= len(X):
            return X, y
        rows = np.sort(rng.choice(len(X), size=n, replace=False))
        return X[rows], y[rows]

    return (*subset(X_tr, y_tr, n_train), *subset(X_te, y_te, n_test), names)


def machine_info() -> dict:
    """Cores, CPU model, GPU, library versions: what a reader needs to weigh a number."""
    import sklearn
    import skorch

    import dimlearn

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "skorch": skorch.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "dimlearn": dimlearn.__version__,
    }


def machine_line(info: dict) -> str:
    gpu = info["gpu"] or "no GPU"
    return (
        f"{info['cores']} cores ({info['cpu']}), {gpu}; Python {info['python']}, "
        f"torch {info['torch']}, skorch {info['skorch']}, scikit-learn {info['scikit-learn']}"
    )


def command_line(module: str, argv=None) -> str:
    """The shell command that ran ``module`` with ``argv`` (default: this process's own
    arguments), quoted so that it can be pasted back."""
    args = sys.argv[1:] if argv is None else argv
    return f"python -m {module} {shlex.join(args)}".strip()


def knn_vote_accuracy(y_train, neighbours, y_test) -> float:
    """The share of test samples whose neighbours' majority class is their own class
    (ties go to the smaller class label)."""
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    votes = np.apply_along_axis(np.bincount, 1, y_train[neighbours], minlength=n_classes)
    return float((votes.argmax(axis=1) == y_test).mean())


def probe_scores(Z_train, y_train, Z_test, y_test, *, mlp: bool = False, device="cpu") -> dict:
    """Linear probe, kNN-10 (cosine) and precision@k of frozen features.

    linear: ``StandardScaler + LogisticRegression`` test accuracy. knn10_cos: majority vote of
    the 10 nearest training samples by cosine distance. p@k_<metric>: the share of the k
    nearest training samples that have the query's class (the image-search view). With
    ``mlp``, also the DIM paper's probe (:func:`mlp_probe`) as ``mlp``.
    """
    Z_train = np.asarray(Z_train, dtype=np.float32).reshape(len(Z_train), -1)
    Z_test = np.asarray(Z_test, dtype=np.float32).reshape(len(Z_test), -1)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    scores = {"linear": probe.fit(Z_train, y_train).score(Z_test, y_test)}
    for metric, short in (("cosine", "cos"), ("euclidean", "euc")):
        index = NearestNeighbors(n_neighbors=10, metric=metric).fit(Z_train)
        _, neighbours = index.kneighbors(Z_test)
        same = y_train[neighbours] == y_test[:, None]
        scores[f"p@1_{short}"] = float(same[:, 0].mean())
        scores[f"p@10_{short}"] = float(same.mean())
        if metric == "cosine":
            scores["knn10_cos"] = knn_vote_accuracy(y_train, neighbours, y_test)
    if mlp:
        scores["mlp"] = mlp_probe(Z_train, y_train, Z_test, y_test, device=device)
    return scores


def mlp_probe(Z_train, y_train, Z_test, y_test, *, device="cpu", epochs=50, seed=0) -> float:
    """The DIM paper's probe: one hidden layer of 200 units with dropout, trained with Adam
    on the (standardised) frozen features; returns the test accuracy."""
    torch.manual_seed(seed)
    scaler = StandardScaler().fit(Z_train.reshape(len(Z_train), -1))
    train = torch.as_tensor(
        scaler.transform(Z_train.reshape(len(Z_train), -1)), dtype=torch.float32
    )
    test = torch.as_tensor(scaler.transform(Z_test.reshape(len(Z_test), -1)), dtype=torch.float32)
    labels = torch.as_tensor(y_train, dtype=torch.long)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    net = torch.nn.Sequential(
        torch.nn.Linear(train.shape[1], 200),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(200, n_classes),
    ).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    train, labels = train.to(device), labels.to(device)
    for _ in range(epochs):
        for rows in torch.randperm(len(train), device=device).split(256):
            loss = F.cross_entropy(net(train[rows]), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.eval()
    with torch.no_grad():
        predicted = net(test.to(device)).argmax(1).cpu().numpy()
    return float((predicted == y_test).mean())


def _batches(dim, X):
    """Standardised batches of images shaped like ``dim``'s training data (public API)."""
    return ArrayBatches(np.asarray(X), dim.layout_, dim.input_mean_, dim.input_scale_)


@torch.no_grad()
def pooled_local_features(dim, X, grid: int = 2, batch_size: int = 512) -> np.ndarray:
    """The local map C(x), average-pooled to ``grid x grid`` and flattened (the "conv" level)."""
    data = _batches(dim, X)
    encoder = dim.module_.encoder.eval()
    out = []
    for start in range(0, len(data), batch_size):
        local_map = encoder(data.take(slice(start, start + batch_size)))[0]
        out.append(F.adaptive_avg_pool2d(local_map, grid).flatten(1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def untrained_twin(dim, X, batch_size: int = 256):
    """A copy of a fitted estimator whose networks keep their initial random weights.

    Built with the fitted model's seed-free architecture and a fixed seed; BatchNorm
    statistics are estimated from X (a cumulative average over one pass), as training would.
    """
    twin = copy.deepcopy(dim)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = build_module(Settings.from_params(dim.get_params()), dim.layout_)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    module.train()
    data = _batches(dim, X)
    for start in range(0, len(data), batch_size):
        module.encoder(data.take(slice(start, start + batch_size)))
    for norm in norms:
        norm.momentum = 0.1
    twin.module_ = module.eval()
    return twin


def status_mib(*fields: str) -> dict:
    """Fields of ``/proc/self/status`` (reported in kB), in MiB (Linux)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            values[key] = int(rest.split()[0]) / 1024
    return values


def settle_memory() -> None:
    """Free what can be freed and reset the peak RSS, so that a measurement starts from a
    tight baseline: garbage collection, glibc's ``malloc_trim`` (freed heap is otherwise kept
    for reuse) and, on Linux, ``clear_refs`` 5 (resets VmHWM to the current RSS)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def write_results(name: str, payload: dict, markdown: str, out_dir: Path = RESULTS_DIR) -> Path:
    """Writes ``<name>.json`` and ``<name>.md``; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown)
    return md_path


def markdown_table(rows: list[dict], columns: list[tuple]) -> str:
    """``columns`` are ``(key, header)`` or ``(key, header, format)``; format ``"pct"``
    prints a fraction as a percentage with one decimal."""

    def cell(value, fmt):
        if value is None:
            return ""
        if fmt == "pct":
            return f"{100 * value:.1f}"
        return format(value, fmt) if fmt else str(value)

    lines = ["| " + " | ".join(c[1] for c in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = (cell(row.get(c[0]), c[2] if len(c) > 2 else None) for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
