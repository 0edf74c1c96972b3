"""Data-parallel training on CPUs: the same fit on 1 process and on 2 (torchrun, gloo,
DistributedDataParallel), timed, with their losses compared.

    python -m benchmarks.distributed_cpu                   # CIFAR-10 subset, ~10 min on 2 cores
    python -m benchmarks.distributed_cpu --dataset digits --repeats 1

Settings, alternating over the repeats: one process with as many torch threads as cores;
one process with one thread; 2 processes (torchrun) with one thread each. Every run fits
``DeepInfomaxTransformer`` with the defaults but ``width``, ``max_epochs`` and
``random_state=0`` on the same images; the time is the fit's own (in rank 0), the wall time
includes starting Python and torchrun. The point on a CPU is correctness (the 2-process
losses equal the 1-process ones), not speed: 2 processes on 2 cores split the same work
and add the gathers, the all-reduce and a second copy of the per-batch overheads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import (
    RESULTS_DIR,
    load_dataset,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)


def worker(args) -> None:
    """One process of a timed fit (rank 0 prints one JSON line)."""
    import torch
    import torch.distributed as dist

    from dimlearn import DeepInfomaxTransformer

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        dist.init_process_group("gloo")
    torch.set_num_threads(args.threads)
    X = np.load(args.data, mmap_mode="r")
    dim = DeepInfomaxTransformer(
        width=args.width, max_epochs=args.epochs, random_state=0, device="cpu"
    )
    started = time.perf_counter()
    dim.fit(X)
    seconds = time.perf_counter() - started
    if not launched or dist.get_rank() == 0:
        world = dist.get_world_size() if launched else 1
        print(json.dumps({"fit_s": seconds, "losses": dim.loss_curve_, "processes": world}))
    if launched:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(processes: int, threads: int, args, data: Path) -> dict:
    worker_args = [
        "-m", "benchmarks.distributed_cpu", "--worker", "--data", str(data),
        "--threads", str(threads), "--width", str(args.width), "--epochs", str(args.epochs),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME="lo")
    if processes == 1:
        command = [sys.executable, *worker_args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
            "--master-addr=127.0.0.1", f"--master-port={_free_port()}", *worker_args,
        ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]
    return {**json.loads(line), "wall_s": wall, "threads": threads}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits"))
    parser.add_argument("--n", type=int, default=4096, help="training images")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    cores = os.cpu_count() or 1
    X = load_dataset(args.dataset, args.n, 0, seed=0)[0]
    data = RESULTS_DIR / f".distributed_cpu_{args.dataset}.npy"  # removed at the end
    np.save(data, np.ascontiguousarray(X))
    settings = [(1, cores), (1, 1), (2, 1)]
    runs = {s: [] for s in settings}
    try:
        for repeat in range(args.repeats):
            for processes, threads in settings:
                run = _run(processes, threads, args, data)
                runs[(processes, threads)].append(run)
                print(
                    f"repeat {repeat + 1}: {processes} process(es) x {threads} thread(s): "
                    f"fit {run['fit_s']:.1f} s, wall {run['wall_s']:.1f} s",
                    flush=True,
                )
    finally:
        data.unlink(missing_ok=True)
    reference = runs[(1, 1)][0]["losses"]
    rows = []
    for (processes, threads), found in runs.items():
        fit = statistics.median(r["fit_s"] for r in found)
        rows.append(
            {
                "setting": f"{processes} process(es) x {threads} thread(s)"
                + (" (torchrun, gloo)" if processes > 1 else ""),
                "fit_s": fit,
                "wall_s": statistics.median(r["wall_s"] for r in found),
                "vs": fit / statistics.median(r["fit_s"] for r in runs[(1, cores)]),
                "loss_gap": max(
                    abs(a - b) / abs(b) for a, b in zip(found[0]["losses"], reference, strict=True)
                ),
            }
        )
    info = machine_info()
    table = markdown_table(
        rows,
        [
            ("setting", "setting"),
            ("fit_s", "fit s (median)", ".1f"),
            ("wall_s", "wall s (median)", ".1f"),
            ("vs", f"fit time / 1 x {cores}", ".2f"),
            ("loss_gap", "max rel. loss gap vs 1 x 1", ".1e"),
        ],
    )
    markdown = (
        f"# Data-parallel training on CPUs\n\n{machine_line(info)}.\n\n"
        f"`python -m benchmarks.distributed_cpu --dataset {args.dataset} --n {args.n} "
        f"--width {args.width} --epochs {args.epochs} --repeats {args.repeats}`: "
        f"{len(X)} images of shape {tuple(X.shape[1:])}, width {args.width}, "
        f"{args.epochs} epoch(s), batch 128, {args.repeats} repeat(s) alternating.\n\n"
        f"{table}"
    )
    payload = {"machine": info, "args": vars(args), "runs": {str(k): v for k, v in runs.items()}}
    path = write_results(f"distributed_cpu_{args.dataset}", payload, markdown)
    print(markdown)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
