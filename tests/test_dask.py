"""GridSearchCV on a real dask.distributed cluster (joblib's Dask backend) gives the same
search as the serial run: same parameter order, same scores, same best parameters.

Bit-identical CPU results need the same torch thread count: dask's nanny starts each worker
with OMP_NUM_THREADS=1, so the serial search here runs with one torch thread too (1 and 2
threads give codes that differ by about 2e-4 after one epoch of this tiny model)."""

import os

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from dimlearn import DeepInfomaxTransformer

distributed = pytest.importorskip("distributed")

GRID = {"dim__alpha": [0.0, 0.5], "dim__beta": [1.0], "dim__gamma": [0.0, 0.1]}


def search(n_jobs):
    pipe = Pipeline(
        [
            (
                "dim",
                DeepInfomaxTransformer(
                    max_epochs=1, width=4, latent_dim=8, random_state=0, device="cpu"
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    return GridSearchCV(pipe, GRID, cv=2, n_jobs=n_jobs)


@pytest.fixture(scope="module")
def dask_client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.mark.dask
@pytest.mark.slow
def test_grid_search_on_dask_matches_serial(dask_client, digit_images):
    X, y = digit_images
    X, y = X[:300], y[:300]
    workers = dask_client.run(lambda: (torch.get_num_threads(), os.getpid()))
    assert len(workers) == 2 and {threads for threads, _ in workers.values()} == {1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same float sums, the same codes
    try:
        serial = search(n_jobs=1).fit(X, y)
    finally:
        torch.set_num_threads(threads)
    with joblib.parallel_backend("dask"):
        on_dask = search(n_jobs=-1).fit(X, y)
    assert on_dask.cv_results_["params"] == serial.cv_results_["params"]
    np.testing.assert_allclose(
        on_dask.cv_results_["mean_test_score"],
        serial.cv_results_["mean_test_score"],
        rtol=0,
        atol=1e-12,
    )
    assert on_dask.best_params_ == serial.best_params_
