"""Speed benchmark: what the scikit-learn/skorch wrapper costs over a bare torch loop, and
transform throughput and memory as n grows.

    python -m benchmarks.speed                      # both parts, about 6 minutes on 2 cores
    python -m benchmarks.speed --part fit --repeats 3

fit: ``DeepInfomaxTransformer.fit`` against a plain torch loop that trains the same networks
(same initial weights) with the same loss, batches, optimiser and thread count, in the same
process, alternating, several repeats; the ratio of times is reported as a median.
transform: images/s and the peak memory beyond the input and output arrays, for growing n,
each n in a fresh process. Synthetic uint8 32x32x3 images: speed does not depend on content.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn.infomax import build_module
from dimlearn.inputs import ArrayBatches, channel_stats, resolve_layout, split_batches
from dimlearn.objectives import DeepInfomaxLoss
from dimlearn.settings import Settings

from .common import RESULTS_DIR, machine_info, machine_line, markdown_table, write_results

# one float32 view, as the bare loop trains
WEIGHTS = dict(alpha=0.5, beta=1.0, gamma=0.1, views=1, precision="float32")


def synthetic_images(n: int, seed: int = 0, chunk: int = 10_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        X[start : start + chunk] = rng.integers(
            0, 256, size=X[start : start + chunk].shape, dtype=np.uint8
        )
    return X


def bare_torch_fit(X, *, width, epochs, batch_size, lr, seed) -> float:
    """The same training in plain torch; returns seconds, data preparation included."""
    start = time.perf_counter()
    layout = resolve_layout(X.shape[1:], None, "auto")
    data = ArrayBatches(X, layout, *channel_stats(X, layout)).take(slice(None))  # once, whole
    spec = DeepInfomaxTransformer(width=width, **WEIGHTS)
    torch.manual_seed(seed)
    config = Settings.from_params(spec.get_params())
    module = build_module(config, layout).train()
    loss_fn = DeepInfomaxLoss(config.objective.weights)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    sizes = split_batches(len(X), batch_size)
    bounds = np.cumsum([0, *sizes])
    for _ in range(epochs):
        order = torch.randperm(len(X))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            batch = data[order[lo:hi]]
            loss = loss_fn(module(batch, loss_fn.active_terms))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return time.perf_counter() - start


def wrapper_fit(X, *, width, epochs, batch_size, lr, seed) -> float:
    start = time.perf_counter()
    DeepInfomaxTransformer(
        width=width,
        max_epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        random_state=seed,
        device="cpu",
        **WEIGHTS,
    ).fit(X)
    return time.perf_counter() - start


def fit_part(args) -> list[dict]:
    rows = []
    X = synthetic_images(args.n_fit)
    for width in args.widths:
        kwargs = dict(width=width, epochs=args.epochs, batch_size=128, lr=1e-3, seed=0)
        wrapper_fit(X[:256], **{**kwargs, "epochs": 1})  # warm up both paths once
        bare_torch_fit(X[:256], **{**kwargs, "epochs": 1})
        pairs = []
        for repeat in range(args.repeats):
            order = (
                (wrapper_fit, bare_torch_fit) if repeat % 2 == 0 else (bare_torch_fit, wrapper_fit)
            )
            times = {fn.__name__: fn(X, **kwargs) for fn in order}
            pairs.append((times["wrapper_fit"], times["bare_torch_fit"]))
            print(
                f"  width {width}, repeat {repeat}: wrapper {pairs[-1][0]:.2f} s, "
                f"bare {pairs[-1][1]:.2f} s",
                flush=True,
            )
        wrapper_s = np.median([w for w, _ in pairs])
        bare_s = np.median([b for _, b in pairs])
        images = args.n_fit * args.epochs
        rows.append(
            {
                "model": f"width {width}",
                "n": args.n_fit,
                "epochs": args.epochs,
                "threads": torch.get_num_threads(),
                "wrapper_img_s": images / wrapper_s,
                "bare_img_s": images / bare_s,
                "ratio": float(np.median([w / b for w, b in pairs])),
                "pairs": pairs,
            }
        )
    return rows


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def transform_child(model_path: str, n: int) -> dict:
    """Runs in a fresh process: transform n images, report time and memory."""
    dim = joblib.load(model_path)
    X = synthetic_images(n)
    dim.transform(X[:1024])  # warm up torch's allocator and kernels
    _reset_peak_rss()
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    codes = dim.transform(X)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    return {
        "n": n,
        "seconds": seconds,
        "img_s": n / seconds,
        "input_mb": X.nbytes / 2**20,
        "output_mb": codes.nbytes / 2**20,
        "rss_before_mb": before,
        "peak_mb": peak,
        "extra_peak_mb": peak - before - codes.nbytes / 2**20,
    }


def transform_part(args) -> list[dict]:
    dim = DeepInfomaxTransformer(max_epochs=1, random_state=0, device="cpu")
    dim.fit(synthetic_images(512))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.joblib"
        joblib.dump(dim, path)
        for n in args.transform_sizes:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.speed", "--child", str(path), str(n)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(
                f"  transform n={n}: {rows[-1]['img_s']:.0f} img/s, extra peak "
                f"{rows[-1]['extra_peak_mb']:.0f} MB",
                flush=True,
            )
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(transform_child(argv[1], int(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["fit", "transform", "all"], default="all")
    parser.add_argument("--n-fit", type=int, default=2048, help="images per fit")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--transform-sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--name", default="speed")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    info = machine_info()
    print(f"{args.name}: {machine_line(info)}", flush=True)
    start = time.perf_counter()
    fit_rows = fit_part(args) if args.part in ("fit", "all") else []
    transform_rows = transform_part(args) if args.part in ("transform", "all") else []
    wall = time.perf_counter() - start

    md = [
        f"## {args.name}\n\nMachine: {machine_line(info)}; torch threads "
        f"{torch.get_num_threads()}. Whole run {wall / 60:.1f} min. Command: "
        f"`python -m benchmarks.speed {' '.join(argv)}`\n"
    ]
    if fit_rows:
        md.append(
            f"\nTraining throughput, {args.n_fit} synthetic 32x32x3 images, "
            f"{args.epochs} epochs, batch 128, Adam, median of {args.repeats} "
            "alternating repeats (ratio = wrapper time / bare torch time):\n\n"
        )
        md.append(
            markdown_table(
                fit_rows,
                [
                    ("model", "model"),
                    ("threads", "threads"),
                    ("wrapper_img_s", "fit img/s", ".1f"),
                    ("bare_img_s", "bare torch img/s", ".1f"),
                    ("ratio", "ratio", ".3f"),
                ],
            )
        )
    if transform_rows:
        md.append(
            "\nTransform (default model, width 64), one fresh process per n; extra peak "
            "= peak RSS - RSS before transform - output array:\n\n"
        )
        md.append(
            markdown_table(
                transform_rows,
                [
                    ("n", "n"),
                    ("img_s", "img/s", ".0f"),
                    ("input_mb", "input MB", ".1f"),
                    ("output_mb", "output MB", ".1f"),
                    ("extra_peak_mb", "extra peak MB", ".1f"),
                ],
            )
        )
    payload = {
        "name": args.name,
        "machine": info,
        "args": vars(args) | {"out": str(args.out)},
        "wall_seconds": wall,
        "fit": fit_rows,
        "transform": transform_rows,
    }
    print(f"wrote {write_results(args.name, payload, ''.join(md), args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
