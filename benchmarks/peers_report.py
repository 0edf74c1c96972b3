"""The report of ``benchmarks.peers``: each row against dimlearn's row of the same size,
runs of some groups merged into an earlier file of the same protocol, the markdown."""

from __future__ import annotations

import json
from pathlib import Path

from .common import machine_line, markdown_table

COLUMNS = [
    ("features", "features"),
    ("dims", "dims"),
    ("linear", "linear %", "pct"),
    ("knn10_cos", "kNN-10 cos %", "pct"),
    ("p@10_cos", "P@10 cos %", "pct"),
    ("seconds", "seconds", ".0f"),
    ("epochs", "epochs", ".1f"),
    ("steps", "steps"),
    ("vs_dimlearn", "dimlearn - row, linear / kNN-10"),
]
PROTOCOL = ("dataset", "n_train", "n_probe", "n_test", "seed", "budget_minutes", "threads")
"""What two runs must share for their rows to go into one table."""


def compare_with_dimlearn(rows) -> list[str]:
    """Fills ``vs_dimlearn`` (dimlearn's row of the same size less this row, in points,
    linear / kNN-10; k-means rows against the conv level) and returns a line for each row
    ahead of dimlearn on either probe."""
    ours = {row["dims"]: row for row in rows if row["group"] == "dimlearn"}
    conv = next(
        (row for row in rows if row["group"] == "dimlearn" and row["level"] == "conv"), None
    )
    wins = []
    for row in rows:
        row.pop("vs_dimlearn", None)
        if row["group"] == "dimlearn":
            continue
        ref = ours.get(row["dims"]) or (conv if row["group"] == "kmeans" else None)
        if ref is None:
            continue
        diffs = [100 * (ref[key] - row[key]) for key in ("linear", "knn10_cos")]
        text = f"{diffs[0]:+.1f} / {diffs[1]:+.1f}"
        if ref["dims"] != row["dims"]:
            text += f" (vs {ref['features']}, {ref['dims']}-d)"
        ahead = " and ".join(p for p, d in zip(("linear", "kNN-10"), diffs, strict=True) if d < 0)
        if ahead:
            wins.append(
                f"- {row['features']} ({row['dims']}-d) is ahead of {ref['features']} "
                f"on {ahead}: {text}"
            )
            text += f" **row ahead on {ahead}**"
        row["vs_dimlearn"] = text
    return wins


def merge_previous(payload: dict, path: Path, groups: list[str], order: list[str]) -> dict:
    """``payload`` with the rows of other groups kept from ``path`` when that file holds a
    run of the same protocol (so a long budget can run a few groups at a time), the rows
    in ``order`` of their groups; otherwise ``payload`` alone."""
    if not path.exists():
        return payload
    previous = json.loads(path.read_text())
    if previous.get("study") != "peers" or any(
        previous.get(key) != payload[key] for key in PROTOCOL
    ):
        print(f"{path} holds another protocol: replaced")
        return payload
    kept = [row for row in previous["rows"] if row["group"] not in groups]
    merged = dict(payload)
    merged["rows"] = sorted(kept + payload["rows"], key=lambda row: order.index(row["group"]))
    merged["commands"] = [
        *[c for c in previous["commands"] if any(g not in groups for g in c["groups"])],
        *payload["commands"],
    ]
    merged["skipped"] = {
        **{g: why for g, why in previous["skipped"].items() if g not in groups},
        **payload["skipped"],
    }
    lightly_rows = {
        **{
            g: info
            for g, info in previous.get("lightly", {}).get("rows", {}).items()
            if g not in groups
        },
        **payload.get("lightly", {}).get("rows", {}),
    }
    if lightly_rows:
        merged["lightly"] = {**previous.get("lightly", {}), **payload.get("lightly", {})}
        merged["lightly"]["rows"] = lightly_rows
    return merged


def markdown(payload) -> str:
    wall = sum(c["wall_seconds"] for c in payload["commands"]) / 60
    lines = [
        f"## Peers: CIFAR-10, {payload['budget_minutes']:g} min per trained row\n",
        f"{payload['n_train']} training images (every feature learner fits on all of them), "
        f"probes on {payload['n_probe']} of them and {payload['n_test']} test images, seed "
        f"{payload['seed']}; training on {payload['threads']} threads; {wall:.1f} min of "
        f"wall time in all. Machine: {machine_line(payload['machine'])}.",
        "Command"
        + ("s" if len(payload["commands"]) > 1 else "")
        + ": "
        + ", ".join(f"`{c['command']}`" for c in payload["commands"])
        + "\n",
        "seconds: training time for trained rows (the same budget for each), end to end for "
        "k-means (patches, whitening, k-means, encoding of the probed images) and PCA; "
        "epochs of the training images; steps of the lightly rows. The last column is "
        "dimlearn's row of the same size less this row, in points (k-means rows: against "
        "dimlearn's conv level).\n",
        markdown_table(payload["rows"], COLUMNS),
    ]
    wins = payload["peers_ahead"]
    if wins:
        lines.append("Where a peer is ahead of dimlearn:\n\n" + "\n".join(wins) + "\n")
    elif any(row["group"] == "dimlearn" for row in payload["rows"]):
        lines.append("No row is ahead of dimlearn's row of its size on either probe.\n")
    lightly = payload.get("lightly")
    if lightly:
        v = lightly["versions"]
        ops = "loaded" if v["torchvision_compiled_ops"] else "not loaded: the CPU torch"
        lines.append(
            f"lightly rows: lightly {v['lightly']}, torchvision {v['torchvision']} (compiled "
            f"ops {ops}), torch {v['torch']}, Python {v['python']} ({lightly['python']}). "
            "The lightly parts that ran:\n"
        )
        for group, row in lightly["rows"].items():
            parts = "; ".join(row["lightly_parts"])
            lines.append(
                f"- {group}: {parts}; batch {row['batch_size']}, {row['optimiser']}, "
                f"{row['precision']}, {row['loader_workers']} loader workers"
            )
        lines.append("")
    for group, reason in payload["skipped"].items():
        lines.append(f"Skipped {group}: {reason}")
    return "\n".join(lines) + "\n"
