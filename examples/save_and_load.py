"""Saving a model, loading it elsewhere, and training on from the file
===================================================================

User story 3: save the fitted extractor to a model file you can ship, load it elsewhere.

``dimlearn.save`` writes one safetensors file (weights) with a JSON description (parameters,
input statistics, history, versions); ``dimlearn.load`` reads it without unpickling
anything, so a model from someone else is safe to open. The fitted state is kept on the
CPU, so a model fitted on a GPU server loads and transforms on a laptop without one. With
``include_training_state=True`` the file also holds what continued training needs.

::

    python examples/save_and_load.py [--quick]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import dimlearn
from dimlearn import DeepInfomaxTransformer


def main(quick: bool) -> None:
    X, _ = load_digits(return_X_y=True)
    images = X.reshape(-1, 8, 8)
    params = dict(max_epochs=2, width=8) if quick else {}
    dim = DeepInfomaxTransformer(random_state=0, **params).fit(images[:1000])
    with tempfile.TemporaryDirectory() as folder:
        path = dimlearn.save(dim, Path(folder) / "digits_dim.safetensors")
        print(f"saved {path.name}: {path.stat().st_size / 1e6:.2f} MB")
        loaded = dimlearn.load(path)
        same = np.array_equal(loaded.transform(images), dim.transform(images))
        print(f"loaded model gives identical codes: {same}")

        # to go on training later, keep the critics and Adam's state too
        full = dimlearn.save(
            dim, Path(folder) / "digits_full.safetensors", include_training_state=True
        )
        print(f"saved {full.name} with training state: {full.stat().st_size / 1e6:.2f} MB")
        resumed = dimlearn.load(full).set_params(warm_start=True).fit(images[1000:])
        dim.set_params(warm_start=True).fit(images[1000:])
        same = np.array_equal(resumed.transform(images), dim.transform(images))
        print(f"training resumed from the file matches the in-memory model: {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny network, 2 epochs")
    main(parser.parse_args().quick)
