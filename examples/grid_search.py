"""Choosing the loss weights by grid search, with labels and without
=================================================================

User story 2: GridSearchCV over the loss weights alpha, beta, gamma, in parallel:
once scored by a downstream classifier (with labels), once by the estimator's own
label-free ``score`` (a held-out local MI estimate, in nats). A figure puts the two
searches' scores side by side.

::

    python examples/grid_search.py [--quick]
"""

import argparse

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from dimlearn import DeepInfomaxTransformer


def main(quick: bool) -> None:
    X, y = load_digits(return_X_y=True)
    settings = dict(max_epochs=3, width=4) if quick else dict(max_epochs=10, width=16)
    pipe = Pipeline(
        [
            ("dim", DeepInfomaxTransformer(image_shape=(8, 8), random_state=0, **settings)),
            ("clf", LogisticRegression(max_iter=5000)),
        ]
    )
    grid = {"dim__alpha": [0.0, 0.5], "dim__beta": [1.0], "dim__gamma": [0.01, 0.1]}
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=2).fit(X, y)
    for params, score in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        print(f"{params}: {score:.3f}")
    print(f"best by a classifier's accuracy: {search.best_params_}")

    # without labels: DeepInfomaxTransformer.score is the held-out local MI bound
    unlabelled = GridSearchCV(
        DeepInfomaxTransformer(image_shape=(8, 8), random_state=0, **settings),
        {"alpha": [0.0, 0.5], "gamma": [0.0, 0.1]},
        cv=3,
        n_jobs=2,
    ).fit(X)
    for params, score in zip(
        unlabelled.cv_results_["params"], unlabelled.cv_results_["mean_test_score"], strict=True
    ):
        print(f"{params}: {score:.3f} nats")
    print(f"best by held-out local MI, no labels: {unlabelled.best_params_}")

    # both searches' mean scores over the 3 folds, each setting a bar
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    for ax, found, unit in ((left, search, "test accuracy"), (right, unlabelled, "nats")):
        names = [
            ", ".join(f"{k.removeprefix('dim__')}={v}" for k, v in p.items() if k[-4:] != "beta")
            for p in found.cv_results_["params"]
        ]
        ax.barh(names, found.cv_results_["mean_test_score"], color="tab:blue")
        ax.set(xlabel=f"mean {unit}, 3 folds")
    left.set_title("with labels: LogisticRegression on the codes", fontsize=10)
    right.set_title("without labels: DeepInfomaxTransformer.score", fontsize=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny network, 3 epochs")
    args = parser.parse_args()
    main(args.quick)
    if not args.quick:
        plt.show()  # the figure, in a window where there is a display
