"""The codes a checkout of dimlearn gives, to compare two checkouts bit for bit.

Writes, to one ``.npz``, the float32 codes of every model file and pickle in
``tests/fixtures/`` (written by dimlearn 0.2 and 0.3.0) and of a few seeded fits on the CPU
(one thread, ``precision="float32"``): grey and colour images (two views, ``local_scales=2``),
table rows (with reconstruction and early stopping), the Keras reference's objective with
``augment``, a cosine schedule followed by ``partial_fit``. A change that is meant to move
nothing must give arrays equal bit for bit on the same machine::

    git worktree add /tmp/before REV
    PYTHONPATH=/tmp/before python benchmarks/codes_of.py /tmp/before.npz
    python benchmarks/codes_of.py /tmp/after.npz
    python benchmarks/codes_of.py --compare /tmp/before.npz /tmp/after.npz

Run it as a script (not with ``-m``), so that ``PYTHONPATH`` decides which dimlearn is read.
"""

from __future__ import annotations

import argparse
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def fixture_codes() -> dict:
    import dimlearn

    codes = {}
    for version in ("0_2", "0_3"):
        expected = json.loads((FIXTURES / f"{version}_expected.json").read_text())
        for path in sorted(FIXTURES.glob(f"{version}_*")):
            kind = "tabular" if "tabular" in path.name else "image"
            X = np.asarray(expected["inputs"][kind], dtype=np.float64)
            if version == "0_3" and kind == "image":
                X = X.astype(np.uint8)  # fitted on uint8 images
            if path.suffix == ".safetensors":
                model = dimlearn.load(path)
            elif path.suffix == ".pickle" and "unfitted" not in path.name:
                with open(path, "rb") as handle:
                    model = pickle.load(handle)  # our own fixture
            else:
                continue
            codes[path.name] = model.transform(X)
    return codes


def fit_codes() -> dict:
    from sklearn.datasets import load_digits

    from dimlearn import DeepInfomaxTransformer

    X, _ = load_digits(return_X_y=True)
    images = X[:256].reshape(-1, 8, 8)
    colour = np.random.default_rng(0).integers(0, 255, (128, 16, 16, 3)).astype(np.uint8)
    fast = dict(
        width=8, latent_dim=8, max_epochs=2, random_state=0, precision="float32", device="cpu"
    )
    keras = dict(alpha=0.5, prior="kl", negatives="shuffle", critic="concat", mi_estimator="jsd")

    def codes(X, **params):
        return DeepInfomaxTransformer(**fast, **params).fit(X).transform(X)

    cosine = DeepInfomaxTransformer(**fast, lr_schedule="cosine").fit(images)
    return {
        "images": codes(images),
        "colour, local_scales=2": codes(colour, local_scales=2, critic_width=16),
        "rows": codes(X[:256]),
        "rows, reconstruction, early stopping": codes(
            X[:256], reconstruction=1.0, early_stopping=True
        ),
        "Keras reference, augment": codes(images, **keras, views=1, augment=True),
        "cosine, then partial_fit": cosine.partial_fit(images).transform(images),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help=".npz to write the codes to")
    parser.add_argument("--compare", nargs=2, metavar="NPZ", help="compare two such files")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (np.load(path) for path in args.compare)
        same = True
        for name in sorted(set(before.files) | set(after.files)):
            equal = name in after.files and name in before.files
            equal = equal and np.array_equal(before[name], after[name])
            same &= bool(equal)
            print(f"{'same' if equal else 'DIFFERENT'}  {name}")
        return 0 if same else 1
    if not args.out:
        parser.error("give the .npz to write, or --compare BEFORE AFTER")
    import dimlearn

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0.2 files warn that their description is unsigned
        codes = {**fixture_codes(), **fit_codes()}
    np.savez(args.out, **codes)
    print(f"{len(codes)} arrays of dimlearn {dimlearn.__version__} ({dimlearn.__file__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
