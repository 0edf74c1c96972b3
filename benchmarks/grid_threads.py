"""Threads per worker in a parallel GridSearchCV: how many torch threads each joblib worker
uses, and the wall time of a small real search with each setting.

    python -m benchmarks.grid_threads                 # about 5 minutes on 2 cores
    python -m benchmarks.grid_threads --repeats 1 --n 300

The search: Pipeline(DeepInfomaxTransformer, LogisticRegression) on scikit-learn's digits as
8x8 images, a grid of 4 (alpha, gamma) points, cv=3, refit included. Settings, alternating
over the repeats: serial (n_jobs=1, the parent's torch threads); n_jobs=cores with joblib's
default loky backend as is; the same with workers limited to one thread
(``joblib.parallel_config(inner_max_num_threads=1)``); and oversubscribed, workers allowed
all the cores each (``inner_max_num_threads=cores``). The torch thread count is read inside
each worker, after its fit, by an extra scorer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from dimlearn import DeepInfomaxTransformer

from .common import RESULTS_DIR, machine_info, machine_line, markdown_table, write_results

GRID = {"dim__alpha": [0.0, 0.5], "dim__beta": [1.0], "dim__gamma": [0.0, 0.1]}


def torch_threads(estimator, X, y) -> float:
    """A scorer that reports the torch thread count of the process that scores (the worker)."""
    return float(torch.get_num_threads())


def settings(cores: int) -> dict:
    """name -> (n_jobs, context manager factory)."""
    return {
        "serial (n_jobs=1)": (1, nullcontext),
        f"n_jobs={cores}, loky as is": (cores, nullcontext),
        f"n_jobs={cores}, inner_max_num_threads=1": (
            cores,
            lambda: joblib.parallel_config(backend="loky", inner_max_num_threads=1),
        ),
        f"n_jobs={cores}, inner_max_num_threads={cores} (oversubscribed)": (
            cores,
            lambda: joblib.parallel_config(backend="loky", inner_max_num_threads=cores),
        ),
    }


def run_search(X, y, n_jobs, context, args) -> tuple[float, GridSearchCV]:
    pipe = Pipeline(
        [
            (
                "dim",
                DeepInfomaxTransformer(
                    max_epochs=args.epochs, width=args.width, random_state=0, device="cpu"
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    search = GridSearchCV(
        pipe,
        GRID,
        cv=args.cv,
        n_jobs=n_jobs,
        scoring={"accuracy": "accuracy", "threads": torch_threads},
        refit="accuracy",
    )
    start = time.perf_counter()
    with context():
        search.fit(X, y)
    return time.perf_counter() - start, search


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="digits images")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="grid_threads")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    info = machine_info()
    cores = os.cpu_count() or 1
    print(f"{args.name}: {machine_line(info)}", flush=True)
    X, y = load_digits(return_X_y=True)
    X, y = X.reshape(-1, 8, 8)[: args.n], y[: args.n]
    cases = settings(cores)
    run_search(X[:100], y[:100], cores, nullcontext, args)  # warm up loky's workers once
    times = {name: [] for name in cases}
    found = {}
    start = time.perf_counter()
    for repeat in range(args.repeats):
        names = list(cases) if repeat % 2 == 0 else list(cases)[::-1]
        for name in names:
            # untimed: a changed thread limit makes loky start fresh workers (importing torch)
            run_search(
                X[:60], y[:60], *cases[name], argparse.Namespace(**{**vars(args), "epochs": 1})
            )
            seconds, search = run_search(X, y, *cases[name], args)
            times[name].append(seconds)
            found[name] = search
            print(f"  repeat {repeat}, {name}: {seconds:.1f} s", flush=True)
    wall = time.perf_counter() - start

    serial = float(np.median(times["serial (n_jobs=1)"]))
    rows = []
    for name, search in found.items():
        res = search.cv_results_
        threads = sorted(
            {int(t) for k in res if k.endswith("_test_threads") and "split" in k for t in res[k]}
        )
        median = float(np.median(times[name]))
        rows.append(
            {
                "setting": name,
                "worker_threads": ", ".join(map(str, threads)),
                "seconds": median,
                "min_s": min(times[name]),
                "max_s": max(times[name]),
                "speedup": serial / median,
                "best_accuracy": float(search.best_score_),
                "best_params": {k: v for k, v in search.best_params_.items() if k != "dim__beta"},
                "times": times[name],
            }
        )
    fits = len(found["serial (n_jobs=1)"].cv_results_["params"]) * args.cv
    md = [
        f"## {args.name}\n\nMachine: {machine_line(info)}; torch threads in the parent "
        f"{torch.get_num_threads()}. Whole run {wall / 60:.1f} min. Command: "
        f"`python -m benchmarks.grid_threads {' '.join(argv)}`\n",
        f"\nGridSearchCV of Pipeline(DeepInfomaxTransformer(width={args.width}, "
        f"max_epochs={args.epochs}), LogisticRegression) on {args.n} digits (8x8), "
        f"4 grid points x cv={args.cv} = {fits} fits + the refit (in the parent); median wall "
        f"time of {args.repeats} alternating repeats (min-max), each after an untimed tiny search "
        "with the same setting (workers started). Worker threads: "
        "torch.get_num_threads() read inside the process that scored each split.\n\n",
        markdown_table(
            rows,
            [
                ("setting", "setting"),
                ("worker_threads", "torch threads per fit"),
                ("seconds", "wall s", ".1f"),
                ("min_s", "min s", ".1f"),
                ("max_s", "max s", ".1f"),
                ("speedup", "vs serial", ".2f"),
                ("best_accuracy", "best cv accuracy", ".3f"),
            ],
        ),
    ]
    payload = {
        "name": args.name,
        "machine": info,
        "args": vars(args) | {"out": str(args.out)},
        "wall_seconds": wall,
        "rows": rows,
    }
    print(f"wrote {write_results(args.name, payload, ''.join(md), args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
