"""The seed's KNN picture: each row a test query and its 9 nearest training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors


def save_knn_figures(
    X_train, X_test, Z_train, Z_test, name, out_dir: Path, *, seed=0, n_queries=8, n_neighbours=9
) -> list[Path]:
    """One PNG per distance (cosine, euclidean): query in the first column, then neighbours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = np.random.default_rng(seed).choice(len(X_test), size=n_queries, replace=False)
    grey = X_train.ndim == 3
    paths = []
    for metric in ("cosine", "euclidean"):
        index = NearestNeighbors(n_neighbors=n_neighbours, metric=metric).fit(Z_train)
        _, neighbours = index.kneighbors(Z_test[queries])
        fig, axes = plt.subplots(
            n_queries, n_neighbours + 1, figsize=(n_neighbours + 1, n_queries * 1.05)
        )
        for row, (query, found) in enumerate(zip(queries, neighbours, strict=True)):
            images = [X_test[query], *X_train[found]]
            for col, image in enumerate(images):
                ax = axes[row, col]
                ax.imshow(image, cmap="gray" if grey else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    for spine in ax.spines.values():
                        spine.set_edgecolor("red")
                        spine.set_linewidth(2)
        fig.suptitle(
            f"{name}: test query (red) and its {n_neighbours} nearest training "
            f"images by {metric} distance of DIM codes",
            fontsize=9,
        )
        fig.tight_layout()
        path = Path(out_dir) / f"{name}_knn_{metric}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=60)
        plt.close(fig)
        paths.append(path)
    return paths
