"""User story 3: joblib.dump a fitted extractor and use it elsewhere.

The fitted state is kept on the CPU, so a model fitted on a GPU server loads and transforms
on a laptop without one.

    python examples/save_and_load.py [--quick]
"""

import argparse
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits

from dimlearn import DeepInfomaxTransformer


def main(quick: bool) -> None:
    X, _ = load_digits(return_X_y=True)
    images = X.reshape(-1, 8, 8)
    params = dict(max_epochs=2, width=8) if quick else {}
    dim = DeepInfomaxTransformer(random_state=0, **params).fit(images)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "digits_dim.joblib"
        joblib.dump(dim, path)
        print(f"saved {path.name}: {path.stat().st_size / 1e6:.1f} MB")
        loaded = joblib.load(path)
    same = np.array_equal(loaded.transform(images), dim.transform(images))
    print(f"loaded model gives identical codes: {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny network, 2 epochs")
    main(parser.parse_args().quick)
