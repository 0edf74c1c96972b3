"""Time to quality: probes of the codes against training minutes, from states saved during one
training run per preset, next to PCA of the same size.

    python -m benchmarks.time_to_quality --preset defaults --budget-minutes 30 --n-train 50000
    python -m benchmarks.time_to_quality --figure   # redraw the figure from the results

Fits DIM on CIFAR-10's training images (``--n-train`` of them) under a ``max_time`` budget
and keeps a copy of the networks at the end of the first epoch after every ``--every``
minutes of training (the probing is not training time). Each copy's codes
of ``--n-probe`` training images and ``--n-test`` test images are judged by the README's
protocol (StandardScaler + LogisticRegression, kNN-10 by cosine). The last copy is also
probed at the conv level and, with ``--probe mlp``, by the DIM paper's MLP probe on both
levels. Writes ``benchmarks/results/time_to_quality_<preset>.json`` and ``.md``; ``--figure``
draws every preset found there into ``time_to_quality.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

import dimlearn.callbacks
from dimlearn import DeepInfomaxTransformer

from .common import (
    RESULTS_DIR,
    DatasetMissing,
    Stopwatch,
    command_line,
    load_dataset,
    machine_info,
    machine_line,
    markdown_table,
    probe_scores,
    write_results,
)

OLD_DEFAULTS = dict(
    alpha=0.0,
    beta=1.0,
    gamma=0.1,
    prior="kl_mean",
    negatives="all",
    critic="dot",
    mi_estimator="infonce",
    views=1,
    precision="float32",
    temperature=None,
    lr_schedule="constant",
    augment=False,
)
"""The defaults of dimlearn 0.2, spelled out (today's defaults may differ)."""

PRESETS = {
    "defaults": {},
    "old_defaults": OLD_DEFAULTS,
    "keras_form": dict(
        OLD_DEFAULTS,
        alpha=0.5,
        prior="kl",
        negatives="shuffle",
        critic="concat",
        mi_estimator="jsd",
    ),
}
LABELS = {
    "defaults": "dimlearn defaults",
    "old_defaults": "dimlearn 0.2 defaults",
    "keras_form": "the Keras reference's form",
}


def snapshots_while_fitting(dim, X, every_s: float):
    """Fit ``dim`` on X, keeping ``(training seconds, epochs, networks' weights)`` at the end
    of the first epoch after each multiple of ``every_s`` and at the end."""
    kept = []
    original = dimlearn.callbacks.TimeBudget.on_epoch_end

    def on_epoch_end(budget, net, **kwargs):
        elapsed = dimlearn.callbacks.clock() - budget.start_
        if elapsed >= every_s * (len(kept) + 1):
            state = copy.deepcopy(net.module_.state_dict())
            kept.append((elapsed, len(net.history), state))  # a copy takes about 0.1 s
        return original(budget, net, **kwargs)

    dimlearn.callbacks.TimeBudget.on_epoch_end = on_epoch_end
    try:
        dim.fit(X)
    finally:
        dimlearn.callbacks.TimeBudget.on_epoch_end = original
    seconds = sum(float(entry.get("dur", 0.0)) for entry in dim.history_)
    final = {k: v.clone() for k, v in dim.module_.state_dict().items()}
    if not kept or kept[-1][1] < dim.n_iter_:
        kept.append((seconds, dim.n_iter_, final))
    return kept


def at_snapshot(dim, state):
    """A copy of the fitted estimator holding the networks of ``state``."""
    twin = copy.deepcopy(dim)
    twin.module_.load_state_dict(state, strict=False)  # parts no term trained were dropped
    return twin


def run_preset(args) -> dict:
    data = load_dataset("cifar10", args.n_train, args.n_test, args.seed)
    X_fit, y_fit, X_te, y_te, _ = data
    probe_rows = np.sort(
        np.random.default_rng(args.seed + 1).choice(len(X_fit), args.n_probe, replace=False)
    )
    X_tr, y_tr = X_fit[probe_rows], y_fit[probe_rows]
    params = dict(PRESETS[args.preset], max_epochs=10_000, random_state=args.seed)
    dim = DeepInfomaxTransformer(max_time=args.budget_minutes * 60, **params)
    with Stopwatch() as watch:
        kept = snapshots_while_fitting(dim, X_fit, args.every * 60)
    rows = []
    for seconds, epochs, state in kept:
        twin = at_snapshot(dim, state)
        scores = probe_scores(twin.transform(X_tr), y_tr, twin.transform(X_te), y_te)
        rows.append({"minutes": seconds / 60, "epochs": epochs, "features": "code", **scores})
        print(f"  {seconds / 60:.1f} min: linear {scores['linear']:.3f}", flush=True)
    final = at_snapshot(dim, kept[-1][2])
    levels = [("code", final.transform)]
    final_conv = copy.deepcopy(final).set_params(feature_level="conv")
    levels.append(("conv", final_conv.transform))
    summary = []
    for level, transform in levels:
        Z_tr, Z_te = transform(X_tr), transform(X_te)
        scores = probe_scores(Z_tr, y_tr, Z_te, y_te, mlp=args.probe == "mlp")
        summary.append({"features": f"DIM {level}", "dims": Z_tr.shape[1], **scores})
    flat_fit = X_fit.reshape(len(X_fit), -1).astype(np.float32)
    pca = PCA(n_components=dim.latent_dim, random_state=args.seed).fit(flat_fit)
    pca_scores = probe_scores(
        pca.transform(X_tr.reshape(len(X_tr), -1)),
        y_tr,
        pca.transform(X_te.reshape(len(X_te), -1)),
        y_te,
        mlp=args.probe == "mlp",
    )
    summary.append({"features": f"PCA-{dim.latent_dim}", "dims": dim.latent_dim, **pca_scores})
    return {
        "preset": args.preset,
        "label": LABELS[args.preset],
        "params": dim.get_params(),
        "n_train": len(X_fit),
        "n_probe": len(X_tr),
        "n_test": len(X_te),
        "budget_minutes": args.budget_minutes,
        "wall_seconds": watch.seconds,
        "epochs": dim.n_iter_,
        "curve": rows,
        "final": summary,
    }


def draw(results_dir: Path) -> Path:
    """One figure: linear and kNN-10 accuracy against training minutes, per preset, with
    PCA of the same size as a level line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(path.read_text()) for path in results_dir.glob("time_to_quality_*.json")]
    order = list(PRESETS)  # the presets in their table's order, any others after them
    runs.sort(key=lambda run: order.index(run["preset"]) if run["preset"] in order else 99)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    panels = (("linear", "linear probe"), ("knn10_cos", "kNN-10 (cosine)"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for run in runs:
            curve = run["curve"]
            minutes = [0.0] + [row["minutes"] for row in curve]
            ax.plot(minutes[1:], [100 * row[key] for row in curve], marker="o", label=run["label"])
        pca = next(row for row in runs[0]["final"] if row["features"].startswith("PCA"))
        ax.axhline(100 * pca[key], color="grey", linestyle="--", label=pca["features"])
        ax.set_title(f"CIFAR-10 codes: {title}")
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("test accuracy, %")
        ax.set_xlim(0, max(run["budget_minutes"] for run in runs) + 1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="center right", fontsize=8)
    fig.tight_layout()
    out = results_dir / "time_to_quality.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="defaults")
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=5.0, help="minutes between copies")
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-probe", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", choices=["default", "mlp"], default="mlp")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--figure", action="store_true", help="only redraw the figure")
    args = parser.parse_args(argv)
    if args.figure:
        print(f"wrote {draw(args.out)}")
        return 0
    try:
        payload = run_preset(args)
    except DatasetMissing as missing:
        print(f"skipped: {missing}", file=sys.stderr)
        return 0
    info = machine_info()
    payload["machine"] = info
    command = command_line("benchmarks.time_to_quality", argv)
    markdown = (
        f"## Time to quality: {payload['label']}\n\nCIFAR-10, DIM fitted on "
        f"{payload['n_train']} training images for {args.budget_minutes:g} min "
        f"({payload['epochs']} epochs); probes on {payload['n_probe']} of them and "
        f"{payload['n_test']} test images. Machine: {machine_line(info)}.\n"
        f"Command: `{command}`\n\n"
        + markdown_table(
            payload["curve"],
            [
                ("minutes", "training min", ".1f"),
                ("epochs", "epochs"),
                ("linear", "linear %", "pct"),
                ("knn10_cos", "kNN-10 cos %", "pct"),
                ("p@10_cos", "P@10 cos %", "pct"),
            ],
        )
        + "\n\nAt the end of the budget:\n\n"
        + markdown_table(
            payload["final"],
            [
                ("features", "features"),
                ("dims", "dims"),
                ("linear", "linear %", "pct"),
                ("knn10_cos", "kNN-10 cos %", "pct"),
                ("mlp", "MLP probe %", "pct"),
                ("p@10_cos", "P@10 cos %", "pct"),
            ],
        )
    )
    write_results(f"time_to_quality_{args.preset}", payload, markdown, args.out)
    print(markdown)
    print(f"wrote {draw(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
