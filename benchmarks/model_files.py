"""Model files: how large each way of storing a fitted model is, and how fast it loads.

    python -m benchmarks.model_files              # about a minute on 2 cores
    python -m benchmarks.model_files --alpha 0.5  # a model that trains a global critic too

Fits a default ``DeepInfomaxTransformer`` (width 64: the DIM paper's network) for one epoch
on synthetic uint8 32x32x3 images (sizes depend on the network, not on the data), then
writes it with ``joblib.dump``, ``dimlearn.save``, ``dimlearn.save(...,
include_training_state=True)`` and ``skops.io.dump`` (when skops is installed), and reads
each back, timing the loads. The encoder's own
size (what ``transform`` needs) is reported beside them. Where ``dimlearn.save`` does not
exist (an older dimlearn), only joblib is measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np

import dimlearn
from dimlearn import DeepInfomaxTransformer

from .common import RESULTS_DIR, machine_info, machine_line, markdown_table, write_results


def tensor_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def measure(alpha: float, n: int) -> list[dict]:
    X = np.random.default_rng(0).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    dim = DeepInfomaxTransformer(alpha=alpha, max_epochs=1, random_state=0, device="cpu").fit(X)
    rows = [
        {
            "what": "encoder weights (what transform needs)",
            "mb": tensor_bytes(dim.module_.encoder) / 1e6,
        }
    ]
    writers = [("joblib.dump", lambda p: joblib.dump(dim, p), joblib.load, ".joblib")]
    if hasattr(dimlearn, "save"):
        writers += [
            ("dimlearn.save", lambda p: dimlearn.save(dim, p), dimlearn.load, ".safetensors"),
            (
                "dimlearn.save(include_training_state=True)",
                lambda p: dimlearn.save(dim, p, include_training_state=True),
                dimlearn.load,
                ".safetensors",
            ),
        ]
    try:
        import skops.io as sio

        def skops_load(path):
            return sio.load(path, trusted=sio.get_untrusted_types(file=path))

        writers.append(("skops.io.dump", lambda p: sio.dump(dim, p), skops_load, ".skops"))
    except ImportError:  # the extra 'skops' is not installed
        pass
    codes = dim.transform(X[:64])
    with tempfile.TemporaryDirectory() as folder:
        for name, write, read, suffix in writers:
            path = Path(folder) / f"model{suffix}"
            start = time.perf_counter()
            write(path)
            write_s = time.perf_counter() - start
            start = time.perf_counter()
            loaded = read(path)
            load_s = time.perf_counter() - start
            same = bool(np.array_equal(loaded.transform(X[:64]), codes))
            rows.append(
                {
                    "what": name,
                    "mb": path.stat().st_size / 1e6,
                    "write_s": write_s,
                    "load_s": load_s,
                    "same_codes": same,
                }
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.0, help="global MI weight (default 0)")
    parser.add_argument("--n", type=int, default=512, help="training images (default 512)")
    parser.add_argument("--name", default="model_files")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    info = machine_info()
    rows = measure(args.alpha, args.n)
    command = "python -m benchmarks.model_files" + (
        f" --alpha {args.alpha:g}" if args.alpha else ""
    )
    markdown = (
        f"# Model file sizes: `{command}`\n\n{machine_line(info)}; dimlearn "
        f"{info['dimlearn']}.\n\nA default model (width 64, alpha={args.alpha:g}) fitted for "
        f"one epoch on {args.n} uint8 32x32x3 images.\n\n"
        + markdown_table(
            rows,
            [
                ("what", "stored as"),
                ("mb", "MB", ".1f"),
                ("write_s", "write s", ".2f"),
                ("load_s", "load s", ".2f"),
                ("same_codes", "same codes after load"),
            ],
        )
    )
    write_results(
        args.name, {"machine": info, "args": vars(args), "rows": rows}, markdown, args.out
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
