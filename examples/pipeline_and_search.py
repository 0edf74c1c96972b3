"""Features for a classifier, and image search
============================================

User story 1: Deep InfoMax ahead of LogisticRegression in a Pipeline, and image search
with NearestNeighbors on the codes of the fitted step, drawn by ``dimlearn.plot``.

::

    python examples/pipeline_and_search.py [--quick]
"""

import argparse

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline

from dimlearn import DeepInfomaxTransformer
from dimlearn.plot import plot_neighbours


def main(quick: bool) -> None:
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0, stratify=y)
    params = dict(max_epochs=2, width=8) if quick else {}
    # flat rows of 64 pixels: image_shape tells the estimator they are 8x8 images
    dim = DeepInfomaxTransformer(image_shape=(8, 8), random_state=0, **params)
    pipe = Pipeline([("dim", dim), ("clf", LogisticRegression(max_iter=5000))])
    pipe.fit(X_train, y_train)
    print(f"pipeline test accuracy: {pipe.score(X_test, y_test):.3f}")

    fitted = pipe.named_steps["dim"]
    search = NearestNeighbors(n_neighbors=5, metric="cosine").fit(fitted.transform(X_train))
    distances, indices = search.kneighbors(fitted.transform(X_test[:3]))
    for query, row, dist in zip(y_test[:3], indices, distances, strict=True):
        print(
            f"query {query}: neighbours {y_train[row].tolist()} at cosine distances "
            f"{[round(float(d), 3) for d in dist]}"
        )

    # the three test digits (framed in red) and their 5 nearest training digits
    plot_neighbours(
        X_train.reshape(-1, 8, 8),
        fitted.transform(X_train),
        queries=range(3),
        k=5,
        labels=y_train,
        query_images=X_test[:3].reshape(-1, 8, 8),
        query_codes=fitted.transform(X_test[:3]),
        query_labels=y_test[:3],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny network, 2 epochs")
    args = parser.parse_args()
    main(args.quick)
    if not args.quick:
        plt.show()  # the figure, in a window where there is a display
