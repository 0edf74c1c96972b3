"""The time-to-quality figure of ``benchmarks.peers``: linear and kNN-10 accuracy against
minutes, one line per row over the budgets found in ``peers_*.json``.

A trained row's minutes are its training time (the budget); k-means and PCA are placed at
their end-to-end time. Colour: the method; line: the level (solid for 64-d codes);
marker: the backbone; the 64-d rows thick, the wider ones thin and faded.
"""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {
    "pca": "grey",
    "kmeans": "tab:purple",
    "dimlearn": "tab:red",
    "simclr": "tab:blue",
    "byol": "tab:green",
    "moco": "tab:orange",
}
LINES = {"code": "-", "fc": "--", "backbone": "--", "conv": ":", "features": ":"}
MARKERS = {"conv": "o", "resnet18": "s"}


def style(row: dict) -> dict:
    family, _, backbone = row["group"].partition("-")
    backbone = backbone.split("-")[0]  # "conv-bf16": the bfloat16 rows keep their marker
    return {
        "color": COLOURS.get(family, "black"),
        "linestyle": LINES.get(row["level"], "-"),
        "marker": MARKERS.get(backbone, "D" if family == "dimlearn" else "^"),
        "linewidth": 2.2 if row["dims"] == 64 else 1.3,
        "alpha": 1.0 if row["dims"] == 64 else 0.6,  # the 64-d codes are the comparison
    }


def load_runs(results_dir: Path) -> list[dict]:
    runs = []
    for path in sorted(results_dir.glob("peers_*.json")):
        run = json.loads(path.read_text())
        if run.get("study") == "peers":
            runs.append(run)
    return sorted(runs, key=lambda run: run["budget_minutes"])


def draw(results_dir: Path, out_name: str = "peers.png") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(results_dir)
    if not runs:
        raise SystemExit(f"no peers_*.json in {results_dir}: run python -m benchmarks.peers first")
    lines: dict[str, dict] = {}  # label -> {"row": a row, "points": [(minutes, row)]}
    for run in runs:
        for row in run["rows"]:
            entry = lines.setdefault(row["features"], {"row": row, "points": []})
            entry["points"].append((row["minutes"], row))
    fig, axes = plt.subplots(1, 2, figsize=(15, 7), sharex=True)
    panels = (("linear", "linear probe"), ("knn10_cos", "kNN-10 (cosine)"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for label, entry in lines.items():
            points = sorted(entry["points"], key=lambda point: point[0])
            ax.plot(
                [minutes for minutes, _ in points],
                [100 * row[key] for _, row in points],
                label=f"{label} ({entry['row']['dims']}-d)",
                markersize=5,
                **style(entry["row"]),
            )
        budgets = ", ".join(
            f"{run['budget_minutes']:g} min"
            + (f" on {run['n_train'] // 1000}k images" if "n_train" in run else "")
            for run in runs
        )
        ax.set_title(f"CIFAR-10: {title}\n(budgets {budgets})", fontsize=11)
        ax.set_xlabel(
            f"training minutes, end to end for k-means and PCA ({runs[0]['threads']} threads)"
        )
        ax.set_ylabel("test accuracy, %")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    out = results_dir / out_name
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
