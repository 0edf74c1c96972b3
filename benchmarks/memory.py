"""Memory benchmark: fit and transform on a memory-mapped uint8 array hold no copy of the data.

    python -m benchmarks.memory                     # 30k, 100k, 300k images, about 3 minutes
    python -m benchmarks.memory --sizes 1000 5000 --budget 2 --out /tmp/mem

For each n, the parent writes n random uint8 32x32x3 images to a .npy file in a temporary
folder, chunk by chunk, and a fresh process opens it with ``np.load(path, mmap_mode="r")``
and runs ``fit``, ``transform`` and ``fit(early_stopping=True)`` on it while a thread samples
``/proc/self/status`` every 5 ms. The measure is the peak of RssAnon (heap, torch tensors)
in each phase minus RssAnon at its start: pages of the memory map are file-backed (RssFile),
shared with the page cache and dropped by the kernel under pressure, so they are not a copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import (
    RESULTS_DIR,
    machine_info,
    machine_line,
    markdown_table,
    settle_memory,
    status_mib,
    write_results,
)

IMAGE_SHAPE = (32, 32, 3)
MIB = 2**20


class AnonPeak:
    """Background thread recording the peak RssAnon of this process within each phase."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self.done = interval, 0.0, threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self) -> float:
        with self.lock:
            anon = status_mib("RssAnon")["RssAnon"]
            self.peak = max(self.peak, anon)
            return anon

    def _run(self):
        while not self.done.wait(self.interval):
            self.sample()

    def start_phase(self) -> float:
        """Frees what earlier phases left (so that the start is a tight baseline), resets."""
        settle_memory()
        with self.lock:
            self.peak = 0.0
        return self.sample()


def mapped_mib(path: str) -> float:
    """Resident pages of the memory-mapped file in this process (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line[:1].isupper():  # a mapping's header line: address range, perms, path
            inside = line.endswith(path)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total / 1024


def child(path: str, budget: float) -> list[dict]:
    """In a fresh process: the three phases on the memory-mapped file, one row each."""
    from dimlearn import DeepInfomaxTransformer

    X = np.load(path, mmap_mode="r")
    params = dict(
        width=4, latent_dim=16, max_time=budget, max_epochs=1000, batch_size=128, random_state=0
    )
    # warm up torch's kernels, thread pool and allocator on 512 rows: one-time costs that
    # do not depend on n and would otherwise land in the first phase
    warm_up = DeepInfomaxTransformer(**{**params, "max_epochs": 1}, device="cpu")
    warm_up.fit(X[:512]).transform(X[:512])
    sampler, rows, dim = AnonPeak(), [], None
    phases = [("fit", {}), ("transform", None), ("fit early_stopping", {"early_stopping": True})]
    for phase, extra in phases:
        row = {"n": len(X), "phase": phase, "data_mib": X.nbytes / MIB, "output_mib": 0.0}
        start_anon = sampler.start_phase()
        start = time.perf_counter()
        try:
            if extra is None:
                row["output_mib"] = dim.transform(X).nbytes / MIB
            else:
                dim = DeepInfomaxTransformer(**params, **extra, device="cpu")
                dim.fit(X)
        except Exception as error:  # a failing phase still has its memory measured
            row["error"] = f"{type(error).__name__}: {error}"
            print(f"n={len(X)} {phase}: {row['error']}", file=sys.stderr)
        row["seconds"] = time.perf_counter() - start
        peak = max(sampler.peak, sampler.sample())
        end = status_mib("VmHWM", "RssFile")
        row |= {
            "anon_start_mib": start_anon,
            "anon_growth_mib": peak - start_anon,
            "net_growth_mib": peak - start_anon - row["output_mib"],
            "vm_hwm_mib": end["VmHWM"],
            "rss_file_mib": end["RssFile"],
            "mapped_mib": mapped_mib(path),
        }
        if extra is None:
            row["img_s"] = len(X) / row["seconds"]
        elif "error" not in row:
            n_train = len(X) - (round(0.1 * len(X)) if extra else 0)
            row["epochs"] = dim.n_iter_
            batches = [b for epoch in dim.history_ for b in epoch["batches"]]
            row["batches"] = sum("train_batch_size" in b for b in batches)  # not valid ones
            row["batches_per_epoch"] = -(-n_train // 128)
        rows.append(row)
    sampler.done.set()
    return rows


def write_images(path: Path, n: int, seed: int = 0, chunk: int = 10_000) -> None:
    """n random uint8 images into a .npy file, never holding more than ``chunk`` in memory."""
    need = n * int(np.prod(IMAGE_SHAPE)) + 64 * MIB
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise SystemExit(
            f"not enough disk in {path.parent} for {n} images: {need / MIB:.0f} MiB needed, "
            f"{free / MIB:.0f} MiB free; pass --tmp-dir on a larger disk or smaller --sizes"
        )
    rng = np.random.default_rng(seed)
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *IMAGE_SHAPE))
    for start in range(0, n, chunk):
        X[start : start + chunk] = rng.integers(0, 256, X[start : start + chunk].shape, np.uint8)
    X.flush()
    del X


def run_size(n: int, args) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="dimlearn_memory_") as folder:
        path = Path(folder) / "images.npy"
        write_images(path, n)
        command = [sys.executable, "-m", "benchmarks.memory", "--child", str(path)]
        result = subprocess.run(
            [*command, "--budget", str(args.budget)], capture_output=True, text=True
        )
    if result.returncode != 0:
        raise RuntimeError(f"child for n={n} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def verdict(rows: list[dict]) -> str:
    """One sentence per phase, derived from the numbers: flat in n, or growing with it."""
    sentences = []
    for phase in dict.fromkeys(row["phase"] for row in rows):
        mine = sorted((r for r in rows if r["phase"] == phase), key=lambda r: r["n"])
        growth = [r["net_growth_mib"] for r in mine]
        spread = max(growth) - min(growth)
        data_spread = mine[-1]["data_mib"] - mine[0]["data_mib"]
        ratio = max(growth) / min(growth) if min(growth) > 0 else float("inf")
        flat = spread < 0.1 * data_spread
        sentences.append(
            f"**{phase}**: peak anonymous growth {min(growth):.1f} to {max(growth):.1f} MiB "
            f"(largest / smallest = {ratio:.2f}) while the data grows by {data_spread:.0f} MiB "
            f"from n={mine[0]['n']} to n={mine[-1]['n']}: "
            + (
                "flat, no copy of the data (even a uint8 copy of a tenth of it would add "
                f"{0.1 * data_spread:.0f} MiB)."
                if flat
                else f"NOT flat: it varies by {spread:.1f} MiB, {spread / data_spread:.2f} MiB "
                "per MiB of data (a uint8 copy of the data would be 1, a float32 copy 4)."
            )
        )
    return "\n".join(f"- {s}" for s in sentences) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30_000, 100_000, 300_000])
    parser.add_argument("--budget", type=float, default=10.0, help="max_time of each fit, s")
    parser.add_argument("--tmp-dir", default=None, help="where the .npy files go (temp dir)")
    parser.add_argument("--name", default="memory")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.budget)))
        return 0

    info = machine_info()
    print(f"{args.name}: {machine_line(info)}", flush=True)
    start, rows = time.perf_counter(), []
    for n in args.sizes:
        rows += run_size(n, args)
        for row in rows[-3:]:
            print(
                f"  n={n} {row['phase']}: peak anon +{row['anon_growth_mib']:.1f} MiB, "
                f"VmHWM {row['vm_hwm_mib']:.0f} MiB, RssFile {row['rss_file_mib']:.0f} MiB",
                flush=True,
            )
    wall = time.perf_counter() - start
    md = (
        f"## {args.name}\n\nMachine: {machine_line(info)}; torch threads "
        f"{info['torch_threads']}. Whole run {wall / 60:.1f} min. Command: "
        f"`{' '.join(['python -m benchmarks.memory', *argv])}`\n\n"
        "Each n: random uint8 32x32x3 images in a .npy file, opened with `np.load(path, "
        'mmap_mode="r")` in a fresh process, which warms up on 512 rows, then runs '
        "`DeepInfomaxTransformer(width=4, latent_dim=16, batch_size=128, max_time="
        f"{args.budget:g}, max_epochs=1000).fit(X)`, `transform(X)`, and `fit(X)` with "
        "`early_stopping=True` (its 10% held-out split indexes into X). A thread reads "
        "`/proc/self/status` every 5 ms. *anon +* is the peak RssAnon (anonymous memory: heap, "
        "torch tensors) during the phase minus RssAnon at its start (after `gc.collect()` and "
        "`malloc_trim(0)`); *net* subtracts the transform's n x 16 float32 output, which is the "
        "result. File-backed pages (RssFile) are left out on purpose: the memory map's pages "
        "belong to the page cache, are shared and dropped by the kernel under memory pressure, "
        "so reading the file (statistics, epoch, transform) raises RssFile and VmHWM (peak "
        "total RSS, reset at each phase start) towards the data size without any copy; "
        "*mapped* is the .npy file's part of RssFile (from `/proc/self/smaps`), the rest is "
        "shared libraries. Epochs and batches: what fit ran within the time budget (on large "
        "n it stops inside the first epoch, at a batch end).\n\n"
        + markdown_table(
            rows,
            [
                ("n", "n"),
                ("phase", "phase"),
                ("data_mib", "data MiB", ".0f"),
                ("anon_start_mib", "anon at start MiB", ".0f"),
                ("anon_growth_mib", "anon + MiB", ".1f"),
                ("net_growth_mib", "net anon + MiB", ".1f"),
                ("vm_hwm_mib", "VmHWM MiB", ".0f"),
                ("rss_file_mib", "RssFile MiB", ".0f"),
                ("mapped_mib", "mapped MiB", ".0f"),
                ("seconds", "s", ".1f"),
                ("img_s", "transform img/s", ".0f"),
                ("epochs", "epochs", "d"),
                ("batches", "batches", "d"),
                ("batches_per_epoch", "batches/epoch", "d"),
            ],
        )
        + "\n"
        + (verdict(rows) if len(args.sizes) > 1 else "")
        + "".join(
            f"- n={r['n']} {r['phase']} raised `{r['error']}` (its memory is still measured)\n"
            for r in rows
            if "error" in r
        )
    )
    payload = {"name": args.name, "machine": info, "args": vars(args) | {"out": str(args.out)}}
    payload |= {"wall_seconds": wall, "rows": rows}
    print(f"wrote {write_results(args.name, payload, md, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
