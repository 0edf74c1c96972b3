"""Quality benchmark: fit DeepInfomaxTransformer on a dataset's training images and judge the
frozen features on its test images, next to raw pixels, PCA and the untrained encoder.

    python -m benchmarks.quality --dataset cifar10 --budget-minutes 5 --n-train 10000
    python -m benchmarks.quality --dataset cifar10 --study ablation --budget-minutes 3
    python -m benchmarks.quality --dataset digits --budget-minutes 0.5     # a quick run

Studies: ``baselines`` (the Keras reference's claims 1 and 3: DIM codes and pooled local map against
raw pixels, PCA of the same size and the untrained encoder, plus a KNN figure),
``ablation`` (claim 2: global only, local only and both, each with and without the prior),
``variants`` (negatives, critic form and MI estimator, each at the same budget) and
``options`` (prior forms, local-local MI, LR schedule and early stopping, each added to the
defaults), ``ideas`` (changes to the defaults for more quality per CPU minute) and ``flips``
(today's defaults with and without mirrored views, next to PCA-64; for one-channel images).
``--only LABEL ...`` runs some rows of a study.
Writes ``benchmarks/results/<name>.json``, ``.md`` and, for baselines, ``<name>_knn_*.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from dimlearn import DeepInfomaxTransformer

from .common import (
    DATASETS,
    RESULTS_DIR,
    DatasetMissing,
    Stopwatch,
    command_line,
    load_dataset,
    machine_info,
    machine_line,
    markdown_table,
    pooled_local_features,
    probe_scores,
    untrained_twin,
    write_results,
)

# the studies below were measured before views and precision had "auto" defaults; each of their
# rows trains one float32 view, as it did then, so their commands still give their tables
ONE_VIEW_FLOAT32 = dict(views=1, precision="float32")
KERAS_FORM = dict(negatives="shuffle", critic="concat", mi_estimator="jsd", prior="kl")
ALL_DOT = dict(negatives="all", critic="dot")
LOCAL_ONLY = dict(alpha=0.0, beta=1.0, gamma=0.0)
ABLATION = [  # the Keras reference's form, as its claim is about it
    ("global + local + prior", dict(KERAS_FORM, alpha=0.5, beta=1.0, gamma=0.1)),
    ("global + local", dict(KERAS_FORM, alpha=0.5, beta=1.0, gamma=0.0)),
    ("global + prior (beta=0)", dict(KERAS_FORM, alpha=0.5, beta=0.0, gamma=0.1)),
    ("global (beta=0)", dict(KERAS_FORM, alpha=0.5, beta=0.0, gamma=0.0)),
    ("local + prior (alpha=0)", dict(KERAS_FORM, alpha=0.0, beta=1.0, gamma=0.1)),
    ("local (alpha=0)", dict(KERAS_FORM, **LOCAL_ONLY)),
]
VARIANTS = [
    (
        "Keras reference's form, alpha .5 beta 1 gamma .1",
        dict(KERAS_FORM, alpha=0.5, beta=1.0, gamma=0.1),
    ),
    ("Keras reference's form, local only, no prior", dict(KERAS_FORM, **LOCAL_ONLY)),
    ("all pairs, dot, JSD, local only, no prior", dict(ALL_DOT, mi_estimator="jsd", **LOCAL_ONLY)),
    (
        "all pairs, dot, infoNCE, local only, no prior",
        dict(ALL_DOT, mi_estimator="infonce", **LOCAL_ONLY),
    ),
    (
        "all pairs, dot, infoNCE, alpha .5 beta 1 gamma .1",
        dict(ALL_DOT, mi_estimator="infonce", alpha=0.5, beta=1.0, gamma=0.1, prior="kl"),
    ),
    (
        "all pairs, dot, infoNCE, local only, no prior, augment",
        dict(ALL_DOT, mi_estimator="infonce", augment=True, **LOCAL_ONLY),
    ),
    ("all pairs, dot, DV, local only, no prior", dict(ALL_DOT, mi_estimator="dv", **LOCAL_ONLY)),
]

# the options beyond the Keras reference, each added to local infoNCE with all pairs and dot critics
# (the defaults before this study, which moved the default prior to "kl_mean", gamma .1)
NO_PRIOR = dict(gamma=0.0)
OPTIONS = [
    ("local only, no prior", NO_PRIOR),
    ("+ prior: KL summed, gamma .1", dict(gamma=0.1, prior="kl")),
    ("+ prior: KL averaged over dims, gamma .1", dict(gamma=0.1, prior="kl_mean")),
    ("+ prior: adversarial, gamma .1", dict(gamma=0.1, prior="adversarial")),
    ("+ local-local MI, delta .5", dict(NO_PRIOR, delta=0.5)),
    ("+ cosine LR schedule over the budget", dict(NO_PRIOR, lr_schedule="cosine")),
    (
        "+ early stopping (10% held out)",
        dict(NO_PRIOR, early_stopping=True, n_iter_no_change=3),
    ),
]

# ideas for more quality per CPU minute, each a change to the defaults before them (one float32
# view) at the same budget; the last row is the defaults they led to
COSINE = dict(lr_schedule="cosine")
IDEAS = [
    ("defaults", {}),
    ("cosine LR over the budget", COSINE),
    ("cosine, lr 2e-3", dict(COSINE, lr=2e-3)),
    ("cosine, batch 64", dict(COSINE, batch_size=64)),
    ("cosine, augment (crop + flip)", dict(COSINE, augment=True)),
    ("cosine, no prior", dict(COSINE, gamma=0.0)),
    ("two views", dict(views=2)),
    ("two views, cosine", dict(COSINE, views=2)),
    ("cosine critic scores, temperature 0.1", dict(temperature=0.1)),
    ("cosine critic scores, temperature 0.2", dict(temperature=0.2)),
    ("two views, temperature 0.1", dict(views=2, temperature=0.1)),
    ("bfloat16 autocast", dict(precision="bfloat16")),
    ("bfloat16, two views", dict(precision="bfloat16", views=2)),
    ("bfloat16, cosine", dict(COSINE, precision="bfloat16")),
    ("bfloat16, two views, cosine", dict(COSINE, precision="bfloat16", views=2)),
    ("defaults after the ideas (views, precision 'auto')", dict(views="auto", precision="auto")),
]

# flips on one-channel images (issue 23, part 4): today's defaults, whose flip="auto" does not
# mirror one-channel images, against the same with flips (what 0.3.0 did), next to PCA
AUTO = dict(views="auto", precision="auto")
FLIPS = [
    ("defaults (flip 'auto': no flips on one channel)", dict(AUTO, flip="auto")),
    ("defaults with flips (flip=True, as 0.3.0)", dict(AUTO, flip=True)),
]

COLUMNS = [
    ("features", "features"),
    ("dims", "dims"),
    ("linear", "linear %", "pct"),
    ("knn10_cos", "kNN-10 cos %", "pct"),
    ("p@1_cos", "P@1 cos %", "pct"),
    ("p@10_cos", "P@10 cos %", "pct"),
    ("p@1_euc", "P@1 euc %", "pct"),
    ("p@10_euc", "P@10 euc %", "pct"),
    ("epochs", "epochs"),
    ("train_s", "train s", ".0f"),
]


PROBE = {"mlp": False, "device": "auto"}
"""Set by ``main`` from ``--probe`` and ``--device``."""


def fit_dim(X, budget_s, seed, **params):
    params = {"max_epochs": 10_000, "device": PROBE["device"], **params}
    dim = DeepInfomaxTransformer(max_time=budget_s, random_state=seed, **params)
    with Stopwatch() as watch:
        dim.fit(X)
    return dim, {"epochs": dim.n_iter_, "train_s": watch.seconds}


def scored(features, Z_train, Z_test, y_train, y_test, **extra):
    row = {"features": features, "dims": int(np.prod(Z_train.shape[1:]))}
    device = "cuda" if PROBE["device"] != "cpu" and torch.cuda.is_available() else "cpu"
    row.update(probe_scores(Z_train, y_train, Z_test, y_test, mlp=PROBE["mlp"], device=device))
    row.update(extra)
    print(
        f"  {features}: linear {row['linear']:.3f}, kNN-10 cos {row['knn10_cos']:.3f}", flush=True
    )
    return row


def probe_rows(n_train: int, n_probe: int | None, seed: int) -> np.ndarray:
    """The training rows the probes see: all of them, or a seeded random subset of ``n_probe``
    (the feature learners still fit on every training row)."""
    if n_probe is None or n_probe >= n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(seed + 1).choice(n_train, size=n_probe, replace=False))


def baselines_study(data, args):
    X_fit, y_fit, X_te, y_te, _ = data
    rows_probe = probe_rows(len(X_fit), args.n_probe, args.seed)
    X_tr, y_tr = X_fit[rows_probe], y_fit[rows_probe]
    flat_tr, flat_te = X_tr.reshape(len(X_tr), -1), X_te.reshape(len(X_te), -1)
    rows = [] if args.no_raw else [scored("raw pixels", flat_tr, flat_te, y_tr, y_te)]
    dim, fit_info = fit_dim(X_fit, args.budget_minutes * 60, args.seed)
    k = dim.latent_dim
    flat_fit = X_fit.reshape(len(X_fit), -1)
    pca = PCA(n_components=min(k, flat_fit.shape[1]), random_state=args.seed).fit(flat_fit)
    rows.append(
        scored(
            f"PCA-{pca.n_components}", pca.transform(flat_tr), pca.transform(flat_te), y_tr, y_te
        )
    )
    twin = untrained_twin(dim, X_fit)
    rows.append(
        scored("untrained encoder: code", twin.transform(X_tr), twin.transform(X_te), y_tr, y_te)
    )
    rows.append(
        scored(
            "untrained encoder: pooled local map",
            pooled_local_features(twin, X_tr),
            pooled_local_features(twin, X_te),
            y_tr,
            y_te,
        )
    )
    codes_tr, codes_te = dim.transform(X_tr), dim.transform(X_te)
    rows.append(scored("DIM: code", codes_tr, codes_te, y_tr, y_te, **fit_info))
    rows.append(
        scored(
            "DIM: pooled local map",
            pooled_local_features(dim, X_tr),
            pooled_local_features(dim, X_te),
            y_tr,
            y_te,
            **fit_info,
        )
    )
    figures = []
    if not args.no_figure:
        from .knn_figure import save_knn_figures

        figures = save_knn_figures(
            X_tr, X_te, codes_tr, codes_te, args.name, args.out, seed=args.seed
        )
    return rows, {"dim_params": dim.get_params(), "figures": [str(f) for f in figures]}


def _configs_study(configs, data, args):
    X_fit, y_fit, X_te, y_te, _ = data
    rows_probe = probe_rows(len(X_fit), args.n_probe, args.seed)
    X_tr, y_tr = X_fit[rows_probe], y_fit[rows_probe]
    rows = []
    chosen = args.only or [label for label, _ in configs]
    for label, params in configs:
        if label not in chosen:
            continue
        params = {**ONE_VIEW_FLOAT32, **params}
        dim, fit_info = fit_dim(X_fit, args.budget_minutes * 60, args.seed, **params)
        rows.append(scored(label, dim.transform(X_tr), dim.transform(X_te), y_tr, y_te, **fit_info))
    return rows, {"configs": {label: {**ONE_VIEW_FLOAT32, **p} for label, p in configs}}


def flips_study(data, args):
    X_fit, y_fit, X_te, y_te, _ = data
    rows_probe = probe_rows(len(X_fit), args.n_probe, args.seed)
    flat_fit = X_fit.reshape(len(X_fit), -1)
    pca = PCA(n_components=64, random_state=args.seed).fit(flat_fit)
    rows = [
        scored(
            "PCA-64",
            pca.transform(flat_fit[rows_probe]),
            pca.transform(X_te.reshape(len(X_te), -1)),
            y_fit[rows_probe],
            y_te,
        )
    ]
    more, info = _configs_study(FLIPS, data, args)
    return rows + more, info


def ablation_study(data, args):
    return _configs_study(ABLATION, data, args)


def variants_study(data, args):
    return _configs_study(VARIANTS, data, args)


def options_study(data, args):
    return _configs_study(OPTIONS, data, args)


def ideas_study(data, args):
    return _configs_study(IDEAS, data, args)


STUDIES = {
    "ideas": ideas_study,
    "flips": flips_study,
    "baselines": baselines_study,
    "ablation": ablation_study,
    "variants": variants_study,
    "options": options_study,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--study", choices=sorted(STUDIES), default="baselines")
    parser.add_argument(
        "--budget-minutes", type=float, default=5.0, help="training time per DIM model (default 5)"
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=10_000,
        help="training images, a random subset (default 10000)",
    )
    parser.add_argument(
        "--n-test", type=int, default=5_000, help="test images, a random subset (default 5000)"
    )
    parser.add_argument(
        "--n-probe",
        type=int,
        default=None,
        help="training images the probes use, a random subset of --n-train (default: all)",
    )
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-pixel probe (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="results file stem (default <dataset>_<study>)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--no-figure", action="store_true", help="skip the KNN figure")
    parser.add_argument(
        "--probe",
        choices=["default", "mlp"],
        default="default",
        help="mlp adds the DIM paper's probe (200 hidden units, dropout) as a column",
    )
    parser.add_argument("--device", default="auto", help="where DIM trains (auto, cpu, cuda)")
    parser.add_argument("--only", nargs="*", default=None, help="labels of the study's rows to run")
    args = parser.parse_args(argv)
    PROBE.update(mlp=args.probe == "mlp", device=args.device)
    args.name = args.name or f"{args.dataset}_{args.study}"

    try:
        data = load_dataset(args.dataset, args.n_train, args.n_test, args.seed)
    except DatasetMissing as missing:
        print(f"skipped: {missing}", file=sys.stderr)
        return 0
    info = machine_info()
    print(
        f"{args.name}: {len(data[0])} train / {len(data[2])} test images; {machine_line(info)}",
        flush=True,
    )
    start = time.perf_counter()
    rows, extra = STUDIES[args.study](data, args)
    wall = time.perf_counter() - start

    payload = {
        "name": args.name,
        "dataset": args.dataset,
        "study": args.study,
        "n_train": len(data[0]),
        "n_test": len(data[2]),
        "n_probe": len(probe_rows(len(data[0]), args.n_probe, args.seed)),
        "seed": args.seed,
        "budget_minutes": args.budget_minutes,
        "wall_seconds": wall,
        "machine": info,
        "rows": rows,
        **extra,
    }
    header = (
        f"## {args.name}\n\n{args.dataset}, {len(data[0])} train / {len(data[2])} test images "
        f"(probes fit on {payload['n_probe']} of the train images), "
        f"seed {args.seed}, DIM training budget {args.budget_minutes:g} min per model, "
        f"whole run {wall / 60:.1f} min. Machine: {machine_line(info)}.\n"
        f"Command: `{command_line('benchmarks.quality', argv)}`\n\n"
    )
    columns = (
        COLUMNS[:4] + [("mlp", "MLP probe %", "pct")] + COLUMNS[4:] if PROBE["mlp"] else COLUMNS
    )
    md = write_results(args.name, payload, header + markdown_table(rows, columns), args.out)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
