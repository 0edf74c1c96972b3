"""Small images: DIM codes on scikit-learn's 8x8 digits, the quickstart's protocol, a few settings.

    python -m benchmarks.small_images           # about 4 minutes on 2 idle cores

The quickstart's split (stratified 75/25, seed 0) and probe (StandardScaler +
LogisticRegression on the codes), plus P@10 by cosine distance (the share of the 10 nearest
training images with the query's digit). Rows: PCA-64, the untrained encoder's codes
(random weights, BatchNorm statistics from one pass over the training images), the
estimator's defaults, and single changes to them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dimlearn import DeepInfomaxTransformer

from .common import (
    RESULTS_DIR,
    command_line,
    knn_vote_accuracy,
    machine_info,
    machine_line,
    markdown_table,
    untrained_twin,
    write_results,
)

SETTINGS = [
    ("defaults (20 epochs)", {}),
    ("0.2 defaults: one view, float32", {"views": 1, "precision": "float32"}),
    ("one view", {"views": 1}),
    ("float32", {"precision": "float32"}),
    ("temperature 0.1", {"temperature": 0.1}),
    ("gamma=0.3", {"gamma": 0.3}),
    ("cosine LR", {"lr_schedule": "cosine"}),
    ("max_epochs=8", {"max_epochs": 8}),
    ("max_epochs=60", {"max_epochs": 60}),
    ("lr=3e-4", {"lr": 3e-4}),
    ("gamma=0 (no prior)", {"gamma": 0.0}),
    ("batch_size=32", {"batch_size": 32}),
    ("flip=True (0.3.0: mirrored views)", {"flip": True}),
    ("critic_width=256", {"critic_width": 256}),
    ("local_scales=2, critic_width=256", {"local_scales": 2, "critic_width": 256}),
]


def scores(Z_train, y_train, Z_test, y_test) -> dict:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    linear = probe.fit(Z_train, y_train).score(Z_test, y_test)
    _, rows = NearestNeighbors(n_neighbors=10, metric="cosine").fit(Z_train).kneighbors(Z_test)
    return {
        "linear": float(linear),
        "knn10": knn_vote_accuracy(y_train, rows, y_test),
        "p10": float((y_train[rows] == y_test[:, None]).mean()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="names of settings to run")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[0], help="random_state of each fit; rows average"
    )
    parser.add_argument("--name", default="small_images")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X.reshape(-1, 8, 8), y, test_size=0.25, random_state=0, stratify=y
    )
    flat_tr, flat_te = X_tr.reshape(len(X_tr), -1), X_te.reshape(len(X_te), -1)
    pca = PCA(n_components=64).fit(flat_tr)
    rows = [
        {"features": "PCA-64", **scores(pca.transform(flat_tr), y_tr, pca.transform(flat_te), y_te)}
    ]
    settings = [s for s in SETTINGS if args.only is None or s[0] in args.only]
    for name, params in settings:
        runs = []
        for seed in args.seeds:
            start = time.perf_counter()
            dim = DeepInfomaxTransformer(random_state=seed, **params).fit(X_tr)
            seconds = time.perf_counter() - start
            if name.startswith("defaults") and seed == args.seeds[0]:
                twin = untrained_twin(dim, X_tr)
                rows.append(
                    {
                        "features": "untrained encoder: code",
                        **scores(twin.transform(X_tr), y_tr, twin.transform(X_te), y_te),
                    }
                )
            codes = scores(dim.transform(X_tr), y_tr, dim.transform(X_te), y_te)
            runs.append({"epochs": dim.n_iter_, "fit_s": seconds, **codes})
            print(name, seed, runs[-1], flush=True)
        row = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
        rows.append({"features": f"DIM code, {name}", **row, "runs": runs})
    info = machine_info()
    command = command_line("benchmarks.small_images", argv)
    markdown = (
        f"## {args.name}\n\nCommand: `{command}`. "
        f"{machine_line(info)}; dimlearn {info['dimlearn']}.\n\nscikit-learn's digits, the "
        f"quickstart's split ({len(X_tr)} train / {len(X_te)} test), 64-d codes; the 8x8 "
        "images get a 4x4 local map (`dimlearn.networks.conv_plan`). DIM rows: the mean "
        f"over random_state {', '.join(map(str, args.seeds))} (each fit's scores are in "
        "the JSON file).\n\n"
        + markdown_table(
            rows,
            [
                ("features", "features"),
                ("linear", "linear %", "pct"),
                ("knn10", "kNN-10 cos %", "pct"),
                ("p10", "P@10 cos %", "pct"),
                ("epochs", "epochs"),
                ("fit_s", "fit s", ".1f"),
            ],
        )
    )
    write_results(args.name, {"machine": info, "rows": rows}, markdown, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
