"""The grid search on a dask cluster
==================================

User story: the same GridSearchCV over alpha, beta, gamma, run on a dask.distributed
cluster through joblib's Dask backend. Here the cluster is local (two worker processes on
this machine); for several machines, connect the Client to their scheduler instead:
``Client("tcp://scheduler:8786")``. Needs ``pip install "dask[distributed]"``.

::

    python examples/dask_grid_search.py [--quick]
"""

import argparse
import time

import joblib
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from dimlearn import DeepInfomaxTransformer

try:
    from distributed import Client, LocalCluster
except ImportError as error:  # pragma: no cover - depends on the environment
    raise SystemExit('this example needs dask: pip install "dask[distributed]"') from error


def make_search(settings: dict, cv: int, n_jobs: int) -> GridSearchCV:
    pipe = Pipeline(
        [
            ("dim", DeepInfomaxTransformer(random_state=0, device="cpu", **settings)),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    grid = {"dim__alpha": [0.0, 0.5], "dim__beta": [1.0], "dim__gamma": [0.0, 0.1]}
    return GridSearchCV(pipe, grid, cv=cv, n_jobs=n_jobs)


def main(quick: bool) -> None:
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 8, 8)
    if quick:
        settings, cv = dict(max_epochs=1, width=4, latent_dim=8), 2
        X, y = X[:300], y[:300]
    else:
        settings, cv = dict(max_epochs=10, width=16), 3

    # dask's nanny starts each worker with OMP_NUM_THREADS=1: one torch thread per worker
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        print(f"dask cluster with {len(client.scheduler_info()['workers'])} workers")
        start = time.perf_counter()
        with joblib.parallel_backend("dask"):
            on_dask = make_search(settings, cv, n_jobs=-1).fit(X, y)
        print(f"searched on dask in {time.perf_counter() - start:.1f} s")

    results = on_dask.cv_results_
    for params, score in zip(results["params"], results["mean_test_score"], strict=True):
        print(f"{params}: {score:.3f}")
    print(f"best on dask: {on_dask.best_params_}")

    if quick:  # cheap here: the same search in this process, with one torch thread as well
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # bit-identical CPU results need the same thread count
        try:
            serial = make_search(settings, cv, n_jobs=1).fit(X, y)
        finally:
            torch.set_num_threads(threads)
        agree = (
            serial.cv_results_["params"] == results["params"]
            and np.array_equal(serial.cv_results_["mean_test_score"], results["mean_test_score"])
            and serial.best_params_ == on_dask.best_params_
        )
        print(f"dask and serial searches agree: {agree}")


if __name__ == "__main__":  # the guard matters: dask's worker processes import this file
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny network, one epoch")
    main(parser.parse_args().quick)
