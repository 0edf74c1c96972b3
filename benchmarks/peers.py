"""Peers: dimlearn next to what a user would pick instead, on the same CIFAR-10 images,
cores, budget and probes (issue 23).

    bash benchmarks/make_bench_env.sh               # once: .venv-bench/, the project + lightly
    python -m benchmarks.peers --budget-minutes 5   # 10k training / 5k test images
    python -m benchmarks.peers --budget-minutes 15  # 50k training; probes on 10k of them + 5k test
    python -m benchmarks.peers --budget-minutes 30  # (the README's 30-minute protocol)
    python -m benchmarks.peers --figure             # the time-to-quality figure from the results

Rows, by group (``--only`` takes groups; a method alone, e.g. ``simclr``, both backbones):

- ``pca``: PCA-64 of the pixels.
- ``kmeans``: Coates & Ng (2011) single-layer k-means features (``benchmarks.peers_kmeans``:
  whitened 6x6 patches, MiniBatchKMeans, triangle activation, 4-quadrant sum pooling) at
  1,600 centroids (6,400-d), PCA-64 of those, and 1,024 centroids (4,096-d, the size of
  dimlearn's conv level); timed end to end (patches, whitening, k-means, encoding).
- ``dimlearn``: ``DeepInfomaxTransformer`` with its defaults under the budget: code (64-d),
  fc (1,024-d) and conv (4,096-d) levels.
- ``simclr-conv``, ``simclr-resnet18``, ``byol-...``, ``moco-...``: lightly's SimCLR, BYOL
  and MoCo v2 (``benchmarks.peers_lightly``) on dimlearn's ConvEncoder and on the CIFAR
  ResNet-18, each trained for the same wall time: the projection head's 64 outputs (code),
  the backbone's features and, for the ConvEncoder, its conv level.

``--peer-precision bfloat16`` trains the lightly rows under bfloat16 autocast, as dimlearn's
``precision="auto"`` does on a processor with native bfloat16; those rows are groups of their
own (``simclr-conv-bf16``), written beside the float32 rows, not over them:

    python -m benchmarks.peers --budget-minutes 5 --only simclr-conv --peer-precision bfloat16

A run of some groups (``--only``) into the file of an earlier run of the same protocol
(images, seed, budget, threads) keeps that file's other rows, so a 30-minute table (seven
trained rows, about four hours) can be made a few groups at a time:

    python -m benchmarks.peers --budget-minutes 30 --only pca kmeans dimlearn simclr
    python -m benchmarks.peers --budget-minutes 30 --only byol moco

Every trained row trains on ``--threads`` threads (2) with nothing else running: the lightly
rows run one at a time in a subprocess of the bench environment's Python (lightly, its
torchvision and their torch stay out of the project's environment), which gets the images
through temporary .npy files and hands back the features; this process then probes them.
Probes as ``benchmarks.quality``: StandardScaler + LogisticRegression, kNN-10 by cosine,
P@10, on the training images the probes see and the test images; nothing here chose any
setting. Writes ``benchmarks/results/<name>.json`` and ``.md`` (default name
``peers_<budget>min``); ``--figure`` draws every ``peers_*.json`` into ``peers.png`` (a
prefix of the records' names, so the docs' record pages show it with each of them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from dimlearn import DeepInfomaxTransformer

from .common import (
    RESULTS_DIR,
    DatasetMissing,
    Stopwatch,
    command_line,
    load_dataset,
    machine_info,
    machine_line,
    probe_scores,
    write_results,
)
from .peers_kmeans import fit_patches, kmeans_features
from .peers_lightly import BACKBONES, METHODS
from .peers_report import compare_with_dimlearn, markdown, merge_previous
from .quality import probe_rows

REPO = Path(__file__).resolve().parents[1]
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
GROUPS = ["pca", "kmeans", "dimlearn", *(f"{m}-{b}" for m in METHODS for b in BACKBONES)]
PRECISION_LABELS = {"float32": "", "bfloat16": ", bfloat16"}
"""A lightly row trained in bfloat16 is a row of its own (group ``<method>-<backbone>-bf16``)
beside the float32 one, so a run with ``--peer-precision bfloat16`` replaces neither."""
ORDER = [*GROUPS, *(f"{g}-bf16" for g in GROUPS if g.split("-")[0] in METHODS)]


def precision_groups(groups: list[str], precision: str) -> list[str]:
    """The row groups a run of ``groups`` writes: the lightly groups get ``-bf16`` in
    bfloat16."""
    if precision == "float32":
        return list(groups)
    return [f"{g}-bf16" if g.split("-")[0] in METHODS else g for g in groups]


def chosen_groups(only) -> list[str]:
    """The groups ``--only`` names (all without it); a method name takes its backbones."""
    if not only:
        return list(GROUPS)

    def matches(group, name):
        return group == name or group.startswith(f"{name}-")

    unknown = [name for name in only if not any(matches(g, name) for g in GROUPS)]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: choose among {GROUPS} or a method")
    return [g for g in GROUPS if any(matches(g, name) for name in only)]


class Rows(list):
    """The result rows; ``add`` probes a pair of feature arrays and appends the row."""

    def __init__(self, y_train, y_test):
        super().__init__()
        self.y_train, self.y_test = y_train, y_test

    def add(self, label, Z_train, Z_test, **fields):
        started = time.perf_counter()
        row = {"features": label, "dims": int(Z_train.shape[1]), **fields}
        row.update(probe_scores(Z_train, self.y_train, Z_test, self.y_test))
        row["minutes"] = row["seconds"] / 60
        row["probe_s"] = time.perf_counter() - started
        print(
            f"  {label} ({row['dims']}-d, {row['seconds']:.0f} s): linear {row['linear']:.3f}, "
            f"kNN-10 {row['knn10_cos']:.3f} (probes {row['probe_s']:.0f} s)",
            flush=True,
        )
        self.append(row)


def pca_rows(rows, data, args):
    X_fit, X_tr, _, X_te, _ = data
    flat = X_fit.reshape(len(X_fit), -1)
    n = min(64, *flat.shape)
    with Stopwatch() as watch:
        pca = PCA(n_components=n, random_state=args.seed).fit(flat)
    project = lambda X: pca.transform(X.reshape(len(X), -1))  # noqa: E731
    rows.add(
        f"PCA-{n}", project(X_tr), project(X_te), group="pca", level="code", seconds=watch.seconds
    )


def kmeans_rows(rows, data, args):
    X_fit, X_tr, _, X_te, _ = data
    prepared = fit_patches(X_fit, args.kmeans_patches, args.seed)
    for i, k in enumerate(args.kmeans_centroids):
        (F_tr, F_te), seconds, facts = kmeans_features(prepared, k, [X_tr, X_te], args.seed)
        common = dict(group="kmeans", n_patches=args.kmeans_patches, stages_s=seconds, **facts)
        label = f"k-means (Coates & Ng), {k:,} centroids"
        rows.add(label, F_tr, F_te, level="features", seconds=seconds["total"], **common)
        if i == 0:  # PCA-64 of the pooled features (fewer where there are fewer)
            n = min(64, *F_tr.shape)
            with Stopwatch() as watch:
                pca = PCA(n_components=n, random_state=args.seed).fit(F_tr)
                P_tr, P_te = pca.transform(F_tr), pca.transform(F_te)
            rows.add(
                f"{label}, PCA-{n}",
                P_tr,
                P_te,
                level="code",
                seconds=seconds["total"] + watch.seconds,
                **common,
            )


def dimlearn_rows(rows, data, args):
    X_fit, X_tr, _, X_te, _ = data
    dim = DeepInfomaxTransformer(
        max_time=args.budget_minutes * 60, max_epochs=10_000, random_state=args.seed, device="cpu"
    )
    with Stopwatch() as watch:
        dim.fit(X_fit)
    facts = {
        "epochs": dim.n_iter_,
        "views": getattr(dim, "views_", None),
        "precision": getattr(dim, "precision_", None),
    }
    for level in ("code", "fc", "conv"):
        dim.set_params(feature_level=level)
        rows.add(
            f"dimlearn defaults: {level}",
            dim.transform(X_tr),
            dim.transform(X_te),
            group="dimlearn",
            level=level,
            seconds=watch.seconds,
            **facts,
        )


def bench_python(args):
    """``(python, versions)`` of an interpreter that runs the lightly rows, or
    ``(None, reason)``: this one if it has lightly, else ``--bench-python``."""
    candidates = [sys.executable] if importlib.util.find_spec("lightly") else []
    candidates.append(str(args.bench_python))
    reason = f"{args.bench_python} not found: make it with `bash benchmarks/make_bench_env.sh`"
    for python in candidates:
        if not Path(python).exists():
            continue
        done = subprocess.run(
            [python, "-m", "benchmarks.peers_lightly", "--versions"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return python, json.loads(done.stdout.strip().splitlines()[-1])
        reason = f"{python} cannot run lightly: {done.stderr.strip().splitlines()[-1:]}"
    return None, reason


def lightly_rows(rows, data, args, groups, record):
    python, versions = bench_python(args)
    if python is None:
        for group in groups:
            record["skipped"][group] = versions
        print(f"skipped {groups}: {versions}", file=sys.stderr)
        return
    record["lightly"] = {"python": python, "versions": versions, "rows": {}}
    X_fit, X_tr, _, X_te, _ = data
    with tempfile.TemporaryDirectory(prefix="dimlearn-peers-") as tmp:
        for name, X in (("fit", X_fit), ("probe", X_tr), ("test", X_te)):
            np.save(Path(tmp) / f"{name}.npy", np.ascontiguousarray(X))
        for group in groups:
            method, backbone = group.split("-")[:2]
            out = Path(tmp) / group
            command = [python, "-m", "benchmarks.peers_lightly", "--data", tmp, "--out", str(out)]
            command += ["--method", method, "--backbone", backbone]
            command += ["--budget-seconds", str(args.budget_minutes * 60), "--seed", str(args.seed)]
            command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            command += ["--precision", args.peer_precision, "--workers", str(args.loader_workers)]
            done = subprocess.run(command, cwd=REPO)
            if done.returncode != 0:
                record["skipped"][group] = f"the bench process exited with {done.returncode}"
                continue
            info = json.loads((out / "info.json").read_text())
            record["lightly"]["rows"][group] = info
            name = (
                f"{METHODS[method]} ({BACKBONES[backbone]}{PRECISION_LABELS[args.peer_precision]})"
            )
            for level in ("code", "backbone", "conv"):
                if not (out / f"{level}_probe.npy").exists():
                    continue
                Z_tr, Z_te = np.load(out / f"{level}_probe.npy"), np.load(out / f"{level}_test.npy")
                rows.add(
                    f"{name}: {level}",
                    Z_tr,
                    Z_te,
                    group=group,
                    level=level,
                    seconds=info["train_s"],
                    epochs=info["epochs"],
                    steps=info["steps"],
                    feature_s=info["feature_s"],
                )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument(
        "--n-train", type=int, default=None, help="10000 up to 5 minutes, else 50000"
    )
    parser.add_argument(
        "--n-probe", type=int, default=None, help="training images the probes see (10000)"
    )
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help=f"groups: {' '.join(GROUPS)}")
    parser.add_argument("--kmeans-centroids", type=int, nargs="+", default=[1600, 1024])
    parser.add_argument("--kmeans-patches", type=int, default=400_000)
    parser.add_argument("--batch-size", type=int, default=128, help="lightly rows (128)")
    parser.add_argument("--peer-precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--loader-workers", type=int, default=0, help="lightly rows' DataLoader")
    parser.add_argument("--bench-python", type=Path, default=BENCH_PYTHON)
    parser.add_argument("--name", help="results file stem (default peers_<budget>min)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--figure", action="store_true", help="only draw the figure")
    args = parser.parse_args(argv)
    if args.figure:
        from .peers_figure import draw

        print(f"wrote {draw(args.out)}")
        return 0
    groups = chosen_groups(args.only)
    if args.n_train is None:
        args.n_train = 10_000 if args.budget_minutes <= 5 else 50_000
    if args.n_probe is None and args.n_train > 10_000:
        args.n_probe = 10_000
    args.name = args.name or f"peers_{args.budget_minutes:g}min"
    torch.set_num_threads(args.threads)
    try:
        X_fit, y_fit, X_te, y_te, _ = load_dataset("cifar10", args.n_train, args.n_test, args.seed)
    except DatasetMissing as missing:
        print(f"skipped: {missing}", file=sys.stderr)
        return 0
    probed = probe_rows(len(X_fit), args.n_probe, args.seed)
    data = (X_fit, X_fit[probed], y_fit[probed], X_te, y_te)
    info = machine_info()
    print(f"{args.name}: {len(X_fit)} train / {len(X_te)} test; {machine_line(info)}", flush=True)
    rows, record = Rows(y_fit[probed], y_te), {"skipped": {}}
    start = time.perf_counter()
    with threadpool_limits(limits=args.threads):
        for group, build in (
            ("pca", pca_rows),
            ("kmeans", kmeans_rows),
            ("dimlearn", dimlearn_rows),
        ):
            if group in groups:
                build(rows, data, args)
        peers = [g for g in groups if g.split("-")[0] in METHODS]
        peers = precision_groups(peers, args.peer_precision)
        if peers:
            lightly_rows(rows, data, args, peers, record)
    payload = {
        "name": args.name,
        "study": "peers",
        "dataset": "cifar10",
        "n_train": len(X_fit),
        "n_probe": len(probed),
        "n_test": len(X_te),
        "seed": args.seed,
        "budget_minutes": args.budget_minutes,
        "threads": args.threads,
        "commands": [
            {
                "command": command_line("benchmarks.peers", argv),
                "groups": groups,
                "wall_seconds": time.perf_counter() - start,
            }
        ],
        "machine": info,
        "rows": list(rows),
        **record,
    }
    written = precision_groups(groups, args.peer_precision)
    payload["commands"][0]["groups"] = written
    payload = merge_previous(payload, args.out / f"{args.name}.json", written, ORDER)
    payload["peers_ahead"] = compare_with_dimlearn(payload["rows"])
    md = write_results(args.name, payload, markdown(payload), args.out)
    print(md.read_text())
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
