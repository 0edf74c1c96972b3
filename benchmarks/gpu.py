"""Every GPU measurement in one command: training and transform speed, then CIFAR-10 quality.

    python -m benchmarks.gpu                  # on a CUDA machine: about 8 minutes
    python -m benchmarks.gpu --tiny           # a smoke run of the same code (CPU, seconds)

Speed: training images/s of the default network (width 64) on synthetic uint8 32x32x3
images at batch 128 and 512, for float32 eager, bfloat16 and bfloat16 + compile (epochs after
the first, which pays for compilation and warm-up), the share of the training time spent
waiting for batches (time inside the batch iterator), and transform images/s. Quality: the
fastest setting trains on CIFAR-10's 50k training images within a 5-minute budget; its codes
and its last conv layer are probed by the linear and kNN-10 probes and by the DIM paper's
MLP probe (200 hidden units, dropout), next to the paper's Table 1 (DIM(L), infoNCE: 69.13
on the code, 75.57 on the conv layer).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn import inputs as dimlearn_inputs

from .common import (
    RESULTS_DIR,
    DatasetMissing,
    load_dataset,
    machine_info,
    machine_line,
    markdown_table,
    probe_scores,
    write_results,
)
from .speed import synthetic_images

PAPER_TABLE_1 = {"code": 69.13, "conv": 75.57}
SETTINGS = [
    ("float32 eager", {"precision": "float32"}),
    ("bfloat16", {"precision": "bfloat16"}),
    ("bfloat16 + compile", {"precision": "bfloat16", "compile": True}),
]


class IteratorClock:
    """Seconds spent inside the training batch iterator (waiting for data), per fit."""

    def __init__(self):
        self.seconds = 0.0
        self.original = dimlearn_inputs.ShuffledBatches.__iter__

    def __enter__(self):
        clock, original = self, self.original

        def timed(batches):
            iterator = original(batches)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    clock.seconds += time.perf_counter() - start
                yield item

        dimlearn_inputs.ShuffledBatches.__iter__ = timed
        return self

    def __exit__(self, *exc):
        dimlearn_inputs.ShuffledBatches.__iter__ = self.original


def speed_rows(n: int, epochs: int, batches, device: str, width: int, settings) -> list[dict]:
    X = synthetic_images(n)
    rows = []
    for batch_size in batches:
        for name, params in settings:
            dim = DeepInfomaxTransformer(
                width=width,
                batch_size=batch_size,
                max_epochs=epochs,
                device=device,
                random_state=0,
                **params,
            )
            with IteratorClock() as waited:
                dim.fit(X)
            durations = [float(d) for d in dim.history_[:, "dur"]]
            steady = durations[1:] or durations
            rows.append(
                {
                    "part": "train",
                    "batch": batch_size,
                    "setting": name,
                    "img_s": n / float(np.median(steady)),
                    "first_epoch_s": durations[0],
                    "data_wait_share": waited.seconds / sum(durations),
                }
            )
            print(rows[-1], flush=True)
    dim = DeepInfomaxTransformer(width=width, max_epochs=1, device=device, random_state=0).fit(
        X[:256]
    )
    dim.transform(X[:1024])  # the device copy and kernels, once
    start = time.perf_counter()
    dim.transform(X)
    rows.append({"part": "transform", "img_s": n / (time.perf_counter() - start)})
    return rows


def quality_rows(setting: dict, budget_s: float, n_train, n_test, device: str) -> list[dict]:
    X_train, y_train, X_test, y_test, _ = load_dataset("cifar10", n_train, n_test, seed=0)
    dim = DeepInfomaxTransformer(
        max_time=budget_s, max_epochs=100_000, device=device, random_state=0, **setting
    ).fit(X_train)
    probe_device = "cuda" if torch.cuda.is_available() and device != "cpu" else "cpu"
    rows = []
    for level in ("code", "conv"):
        dim.set_params(feature_level=level)
        scores = probe_scores(
            dim.transform(X_train),
            y_train,
            dim.transform(X_test),
            y_test,
            mlp=True,
            device=probe_device,
        )
        rows.append(
            {
                "part": "cifar10",
                "level": level,
                "epochs": dim.n_iter_,
                "paper_table_1": PAPER_TABLE_1[level],
                **{k: scores[k] for k in ("linear", "knn10_cos", "mlp")},
            }
        )
        print(rows[-1], flush=True)
    return rows


def device_facts(device: str) -> dict:
    facts = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available() and device != "cpu":
        facts["name"] = torch.cuda.get_device_name(0)
        try:
            facts["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            facts["driver"] = None
    return facts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: small n and budget")
    parser.add_argument("--no-quality", action="store_true", help="speed only")
    parser.add_argument("--name", default="gpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.tiny:
        n, epochs, width, budget, n_train, n_test = 256, 2, 8, 5.0, 2000, 500
    else:
        n, epochs, width, budget, n_train, n_test = 50_000, 3, 64, 300.0, None, None
    start = time.perf_counter()
    # a smoke run leaves out compilation (a minute of CPU per row; tests/test_accelerator.py
    # covers compile=True)
    settings = [s for s in SETTINGS if not (args.tiny and s[1].get("compile"))]
    rows = speed_rows(n, epochs, (128, 512), args.device, width, settings)
    trains = [r for r in rows if r["part"] == "train"]
    fastest = max(trains, key=lambda r: r["img_s"])
    setting = dict(dict(SETTINGS)[fastest["setting"]], batch_size=fastest["batch"])
    if args.tiny:
        setting["width"] = width
    notes = []
    if not args.no_quality:
        try:
            rows += quality_rows(setting, budget, n_train, n_test, args.device)
        except DatasetMissing as missing:
            notes.append(f"CIFAR-10 part skipped: {missing}")
    info = machine_info()
    facts = device_facts(args.device)
    wall = time.perf_counter() - start
    command = "python -m benchmarks.gpu" + (" --tiny" if args.tiny else "")
    markdown = (
        f"## {args.name}\n\nCommand: `{command}` ({wall / 60:.1f} min). {machine_line(info)}; "
        f"device {facts}.\n\nTraining: {n} synthetic uint8 32x32x3 images, width {width}, "
        f"{epochs} epochs per row (img/s from the epochs after the first).\n\n"
        + markdown_table(
            trains,
            [
                ("batch", "batch"),
                ("setting", "setting"),
                ("img_s", "train img/s", ".0f"),
                ("first_epoch_s", "first epoch s", ".1f"),
                ("data_wait_share", "data wait share", ".3f"),
            ],
        )
        + f"\ntransform: {rows[len(trains)]['img_s']:.0f} img/s.\n\nCIFAR-10 with the fastest "
        f"setting ({fastest['setting']}, batch {fastest['batch']}), {budget:g} s budget:\n\n"
        + markdown_table(
            [r for r in rows if r["part"] == "cifar10"],
            [
                ("level", "features"),
                ("epochs", "epochs"),
                ("linear", "linear %", "pct"),
                ("knn10_cos", "kNN-10 cos %", "pct"),
                ("mlp", "MLP probe %", "pct"),
                ("paper_table_1", "paper Table 1 (MLP) %"),
            ],
        )
        + "".join(f"\n{note}\n" for note in notes)
    )
    payload = {"machine": info, "device": facts, "rows": rows, "notes": notes}
    write_results(args.name, payload, markdown, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
