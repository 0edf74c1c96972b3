"""The KNN picture of the Keras reference's blog post: each row a test query and its 9
nearest training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dimlearn.plot import plot_neighbours


def save_knn_figures(
    X_train, X_test, Z_train, Z_test, name, out_dir: Path, *, seed=0, n_queries=8, n_neighbours=9
) -> list[Path]:
    """One PNG per distance (cosine, euclidean): query in the first column, then neighbours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = np.random.default_rng(seed).choice(len(X_test), size=n_queries, replace=False)
    paths = []
    for metric in ("cosine", "euclidean"):
        fig = plot_neighbours(
            X_train,
            Z_train,
            queries,
            n_neighbours,
            metric=metric,
            query_images=X_test,
            query_codes=Z_test,
        )
        fig.suptitle(
            f"{name}: test query (red) and its {n_neighbours} nearest training "
            f"images by {metric} distance of DIM codes",
            fontsize=9,
        )
        path = Path(out_dir) / f"{name}_knn_{metric}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=60)
        plt.close(fig)
        paths.append(path)
    return paths
