"""Tables: DIM codes of tabular rows against PCA of the same size, 3-fold.

    python -m benchmarks.tables --only defaults      # one setting, every table
    python -m benchmarks.tables --only defaults "reconstruction 3" --tables wine "breast cancer"

For each table (scikit-learn's wine and breast cancer, and two ``make_classification`` sets)
the codes are a quarter as wide as the rows (``latent_dim = round(n_features / 4)``). In each
of 3 stratified folds (for each of ``--seeds``, which also seed DIM), DIM is fitted on the
training rows, and its codes are judged
by the README's probes: StandardScaler + LogisticRegression, and kNN-10 by cosine distance,
on the held-out fold. PCA of the same size is fitted on the standardised training rows.
Training seconds are summed over the 3 folds of one seed (the target: within a minute a
table).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine, make_classification
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from dimlearn import DeepInfomaxTransformer

from .common import (
    RESULTS_DIR,
    command_line,
    machine_info,
    machine_line,
    markdown_table,
    probe_scores,
)
from .common import write_results as write

SETTINGS = {
    "defaults": {},
    "MLP encoder (0.2)": {"tabular_encoder": "mlp", "views": 1},
    "MLP encoder, two views": {"tabular_encoder": "mlp", "views": 2},
    "tokens, two views": {"tabular_encoder": "tokens", "views": 2},
    "tokens, 100 epochs": {"tabular_encoder": "tokens", "max_epochs": 100},
    "tokens, two views, 100 epochs": {"tabular_encoder": "tokens", "views": 2, "max_epochs": 100},
    # masked-feature reconstruction (issue 23, part 4): a self-prediction term next to local MI
    "reconstruction 1": {"reconstruction": 1.0},
    "reconstruction 0.3": {"reconstruction": 0.3},
    "reconstruction 3": {"reconstruction": 3.0},
    "reconstruction 10": {"reconstruction": 10.0},
    "reconstruction only (alpha = beta = 0)": {"alpha": 0.0, "beta": 0.0, "reconstruction": 1.0},
    "MLP encoder, reconstruction 1": {"tabular_encoder": "mlp", "reconstruction": 1.0},
}


def tables():
    """``(name, X, y)`` of every table, in a fixed order."""
    yield ("wine", *load_wine(return_X_y=True))
    yield ("breast cancer", *load_breast_cancer(return_X_y=True))
    X, y = make_classification(
        n_samples=1000,
        n_features=20,
        n_informative=8,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        random_state=0,
    )
    yield "synthetic 4-class (1000 x 20)", X, y
    X, y = make_classification(
        n_samples=3000,
        n_features=40,
        n_informative=12,
        n_redundant=8,
        n_classes=3,
        n_clusters_per_class=3,
        class_sep=1.5,
        random_state=1,
    )
    yield "synthetic 3-class (3000 x 40)", X, y


def evaluate(name, X, y, settings: dict, seeds=(0,)) -> list[dict]:
    latent = max(2, round(X.shape[1] / 4))
    folds = [
        (seed, train, test)
        for seed in seeds
        for train, test in StratifiedKFold(3, shuffle=True, random_state=seed).split(X, y)
    ]
    rows = []

    def judged(label, codes_of, seconds=None):
        scores = [probe_scores(*codes_of(train, test, seed)) for seed, train, test in folds]
        return {
            "table": name,
            "features": label,
            "dims": latent,
            "linear": float(np.mean([s["linear"] for s in scores])),
            "knn10_cos": float(np.mean([s["knn10_cos"] for s in scores])),
            "train_s": seconds,
        }

    def pca_codes(train, test, seed):
        scaler = StandardScaler().fit(X[train])
        pca = PCA(latent, random_state=seed).fit(scaler.transform(X[train]))
        return (
            pca.transform(scaler.transform(X[train])),
            y[train],
            pca.transform(scaler.transform(X[test])),
            y[test],
        )

    rows.append(judged(f"PCA-{latent}", pca_codes))
    for label, params in settings.items():
        spent = []

        def dim_codes(train, test, seed, params=params, spent=spent):
            dim = DeepInfomaxTransformer(latent_dim=latent, random_state=seed, **params)
            start = time.perf_counter()
            dim.fit(X[train])
            spent.append(time.perf_counter() - start)
            return dim.transform(X[train]), y[train], dim.transform(X[test]), y[test]

        row = judged(f"DIM: {label}", dim_codes)
        row["train_s"] = sum(spent) / len(seeds)
        rows.append(row)
        print(f"  {name}, {label}: linear {row['linear']:.3f}, kNN-10 {row['knn10_cos']:.3f}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="names of settings to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--tables", nargs="*", default=None, help="names of tables to run (default: all)"
    )
    parser.add_argument("--name", default="tables")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    settings = {k: v for k, v in SETTINGS.items() if args.only is None or k in args.only}
    info = machine_info()
    start = time.perf_counter()
    seeds = tuple(args.seeds)
    chosen = [t for t in tables() if args.tables is None or t[0] in args.tables]
    rows = [row for name, X, y in chosen for row in evaluate(name, X, y, settings, seeds)]
    wall = time.perf_counter() - start
    command = command_line("benchmarks.tables", argv)
    markdown = (
        f"## Tables: DIM codes against PCA of the same size\n\n3 stratified folds for each "
        f"of the seeds {', '.join(map(str, seeds))} (fold split and DIM's random_state), "
        "accuracies averaged over all of them; "
        f"codes a quarter of the features wide; whole run {wall / 60:.1f} min. "
        f"Machine: {machine_line(info)}.\nCommand: `{command}`\n\n"
        + markdown_table(
            rows,
            [
                ("table", "table"),
                ("features", "features"),
                ("dims", "dims"),
                ("linear", "linear %", "pct"),
                ("knn10_cos", "kNN-10 cos %", "pct"),
                ("train_s", "train s (3 folds, one seed)", ".1f"),
            ],
        )
    )
    write(args.name, {"machine": info, "rows": rows, "settings": settings}, markdown, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
