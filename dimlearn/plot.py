"""Figures from fitted models and their codes: training curves, nearest neighbours, 2-D maps.

matplotlib is an optional extra (``pip install 'dimlearn[plot]'``), imported only when a
function is called. Every function returns the ``Figure`` it drew on: a new one, or the
figure of the ``ax`` it was given; except :func:`browse` (from :mod:`dimlearn.browse`),
which writes a folder with a page to browse a collection of images on the map of their
codes, and returns the page's path.
"""

from __future__ import annotations

import math
import textwrap
from numbers import Integral
from pathlib import PurePath
from typing import TYPE_CHECKING

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted

from .browse import browse  # noqa: F401 (public here: the page is a figure you can browse)
from .inputs import _guess_channels_last

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_PANELS = {  # history keys drawn together: panel title, weight parameter of the term
    ("train_loss", "valid_loss"): ("total (weighted sum)", None),
    ("train_global",): ("global MI", "alpha"),
    ("train_local",): ("local MI", "beta"),
    ("train_prior",): ("prior", "gamma"),
    ("train_local_local",): ("local-local MI", "delta"),
    ("train_reconstruction",): ("masked-feature reconstruction", "reconstruction"),
}
_SAME, _OTHER = "tab:green", "tab:red"  # a neighbour's label is its query's, or not


def _pyplot():
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("dimlearn.plot needs matplotlib: pip install 'dimlearn[plot]'") from error
    return plt


def plot_history(estimator, ax: Axes | None = None) -> Figure:
    """Training curves of every loss term in a fitted estimator's ``history_``.

    Parameters
    ----------
    estimator : DeepInfomaxTransformer
        A fitted estimator.
    ax : matplotlib Axes, optional
        None draws a new figure of small multiples, one panel per term with its own y scale
        (the terms differ in scale), the total loss and ``valid_loss`` in the first. An Axes
        gets every curve on its one y axis, with a legend.

    Returns
    -------
    matplotlib.figure.Figure
        One line per recorded term. An epoch cut short (by ``max_time`` or Ctrl-C) is
        circled, at ``epoch - 1 + epoch_fraction``.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from sklearn.datasets import load_digits
    >>> from dimlearn import DeepInfomaxTransformer
    >>> X = load_digits().images[:200]
    >>> dim = DeepInfomaxTransformer(max_epochs=2, width=4, latent_dim=8, random_state=0).fit(X)
    >>> [panel.get_title() for panel in plot_history(dim).axes]
    ['total (weighted sum)', 'local MI (weight beta=1.0)', 'prior (weight gamma=0.1)']
    """
    plt = _pyplot()
    check_is_fitted(estimator, "history_")
    history = [dict(entry) for entry in estimator.history_]
    if not history:
        raise ValueError("The estimator's history_ holds no epoch to plot.")
    x = np.array([e["epoch"] - 1 + e.get("epoch_fraction", 1.0) for e in history])
    cut = np.array([e.get("epoch_fraction", 1.0) < 1 for e in history])
    some_cut, xlim = bool(cut.any()), (min(x.min(), 1) - 0.4, max(x.max(), 1) + 0.4)
    params, panels = estimator.get_params(), []
    for keys, (name, weight) in _PANELS.items():
        if keys := [key for key in keys if any(key in e for e in history)]:
            panels.append((f"{name} (weight {weight}={params[weight]})" if weight else name, keys))
    n = len(history)
    title = f"{type(estimator).__name__} training history, {n} epoch{'s' * (n > 1)}"
    title += "\n(circled: epoch cut short, at the fraction of it that ran)" * some_cut
    if ax is None:
        ncols = len(panels) if len(panels) <= 3 else math.ceil(len(panels) / 2)
        nrows = math.ceil(len(panels) / ncols)
        size = (3.2 * ncols, 2.5 * nrows + 0.4 * (1 + some_cut))
        fig, grid = plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained")
        for spare in grid.flat[len(panels) :]:
            spare.remove()
        axes = list(grid.flat)
        fig.suptitle(title)
    else:
        fig, axes = ax.figure, [ax] * len(panels)
        ax.set_title(title, fontsize=10)
    for panel, (name, keys) in zip(axes, panels, strict=False):
        for key in keys:
            y = np.array([float(e.get(key, np.nan)) for e in history])
            label = key.split("_")[0] if ax is None else f"{key}: {name}"
            panel.plot(x, y, "--" if key == "valid_loss" else "-", marker="o", ms=3, label=label)
            panel.scatter(x[cut], y[cut], s=60, facecolors="none", edgecolors="black")
        if ax is None:
            panel.set_title(name, fontsize=10)
        panel.set(xlabel="epoch", ylabel="loss (nats)", xlim=xlim)
        panel.xaxis.get_major_locator().set_params(integer=True)
        if ax is not None or len(keys) > 1:
            panel.legend(fontsize=8)
    return fig


def _display(tiles: np.ndarray) -> np.ndarray:
    """Images ``(rows, cols, H, W[, C])`` or ``(rows, cols, C, H, W)`` as floats in [0, 1],
    ``(rows, cols, H, W)`` for grey and ``(rows, cols, H, W, 3)`` for colour."""
    shape = tiles.shape[2:]
    if len(shape) == 3:
        if not _guess_channels_last(shape, "an image of shape"):
            tiles = np.moveaxis(tiles, 2, -1)
        if tiles.shape[-1] not in (1, 3, 4):
            raise ValueError(f"Images need 1, 3 or 4 channels; got shape {shape}.")
        tiles = tiles[..., 0] if tiles.shape[-1] == 1 else tiles
    elif len(shape) != 2:
        raise ValueError(f"images must be (n, H, W), (n, H, W, C) or (n, C, H, W); got {shape}.")
    if tiles.dtype == np.uint8:
        tiles = tiles / 255.0
    else:  # values outside [0, 1] are stretched to it, over all the images shown
        tiles, low, high = tiles.astype(float), np.nanmin(tiles), np.nanmax(tiles)
        tiles = (tiles - low) / (high - low or 1.0) if low < 0 or high > 1 else tiles
    if tiles.ndim == 5 and tiles.shape[-1] == 4:  # alpha over white
        tiles = tiles[..., :3] * tiles[..., 3:] + 1 - tiles[..., 3:]
    return tiles


def _rows_of(codes, prefix: str = "", **columns) -> np.ndarray:
    """``codes`` as a 2-D array, after checking that ``columns`` have as many rows."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{prefix}codes must be 2-D (n, n_features); got shape {codes.shape}.")
    for name, column in columns.items():
        if column is not None and len(column) != len(codes):
            raise ValueError(
                f"{prefix}{name} has {len(column)} rows but {prefix}codes has {len(codes)}; "
                "they must describe the same images, row by row."
            )
    return codes


def plot_neighbours(
    images: np.ndarray,
    codes: np.ndarray,
    queries,
    k: int,
    ax: Axes | None = None,
    metric: str = "cosine",
    labels=None,
    paths=None,
    *,
    query_images: np.ndarray | None = None,
    query_codes: np.ndarray | None = None,
    query_labels=None,
    query_paths=None,
) -> Figure:
    """Each query image (a row, framed in red) and its ``k`` nearest neighbours by code.

    Parameters
    ----------
    images : array of shape (n, H, W), (n, H, W, C) or (n, C, H, W), C in 1, 3, 4
        The images searched. uint8 is read as 0..255; other values outside [0, 1] are
        stretched to [0, 1] over the images shown. Grey images are drawn in grey.
    codes : array of shape (n, n_features)
        Their codes (``transform``'s output), among which the neighbours are found.
    queries : sequence of int
        Row indices of the queries: into ``images`` (a query is then never its own
        neighbour), or into ``query_images`` when that is given.
    k : int
        Neighbours per query.
    ax : matplotlib Axes, optional
        None makes a new figure with a grid of axes, one image each. An Axes gets the grid
        as one mosaic image: each image of H x W pixels in a cell of (H + 4b) x (W + 4b),
        ``b = max(1, max(H, W) // 8)``, with a frame of b pixels, red for the queries;
        labels are written over the images' top-left corners, paths left out.
    metric : str, default="cosine"
        Distance between codes, as :class:`~sklearn.neighbors.NearestNeighbors` takes it.
    labels : sequence of length n, optional
        Titles of the images: green where a neighbour has its query's label, red if not.
    paths : sequence of length n, optional
        Files the images came from; their names are written under the images.
    query_images, query_codes, query_labels, query_paths : optional
        Queries from another set (test images searched among training images): its
        images, codes, labels and paths, row by row.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> fig = plot_neighbours(X.reshape(-1, 8, 8), X, queries=[0, 1, 2], k=4, labels=y)
    >>> len(fig.axes)  # 3 queries x (the query + 4 neighbours)
    15
    """
    plt = _pyplot()
    images = np.asarray(images)
    codes = _rows_of(codes, images=images, labels=labels, paths=paths)
    same_set = query_images is None and query_codes is None
    if same_set:
        query_images, query_codes, query_labels, query_paths = images, codes, labels, paths
    elif query_images is None or query_codes is None:
        raise ValueError("query_images and query_codes go together: pass both or neither.")
    query_images = np.asarray(query_images)
    query_columns = dict(images=query_images, labels=query_labels, paths=query_paths)
    query_codes = _rows_of(query_codes, "query_", **query_columns)
    if query_images.shape[1:] != images.shape[1:] or query_codes.shape[1] != codes.shape[1]:
        raise ValueError("query_images and query_codes must be shaped like images and codes.")
    queries = np.asarray(queries)
    if queries.ndim != 1 or queries.dtype.kind not in "iu" or not len(queries):
        raise ValueError(f"queries must be a 1-D sequence of row indices; got {queries!r}.")
    if queries.min() < 0 or queries.max() >= len(query_codes):
        raise ValueError(f"queries must be row indices in [0, {len(query_codes)}); got {queries}.")
    if not isinstance(k, Integral) or not 1 <= k <= len(codes) - same_set:
        raise ValueError(f"k={k}, but {len(codes) - same_set} images can be neighbours.")

    index = NearestNeighbors(n_neighbors=k + same_set, metric=metric).fit(codes)
    found = index.kneighbors(query_codes[queries], return_distance=False)
    if same_set:  # the query is its own nearest neighbour, unless it has twins
        found = np.array(
            [[j for j in row if j != q][:k] for q, row in zip(queries, found, strict=True)]
        )
    tiles = _display(np.concatenate([query_images[queries][:, None], images[found]], axis=1))
    titles, names = {}, {}  # (row, col): (text, colour), (row, col): file name
    for row, (q, neighbours) in enumerate(zip(queries, found, strict=True)):
        mine = None if query_labels is None else query_labels[q]
        if labels is not None and mine is not None:
            titles[row, 0] = (str(mine), "black")
        if query_paths is not None:
            names[row, 0] = PurePath(query_paths[q]).name
        for col, j in enumerate(neighbours, 1):
            if labels is not None:
                agree = "black" if mine is None else _SAME if labels[j] == mine else _OTHER
                titles[row, col] = (str(labels[j]), agree)
            if paths is not None:
                names[row, col] = PurePath(paths[j]).name
    what = "other images" if same_set else "images"
    title = f"Query (red frame) and its {k} nearest {what} by {metric} distance of the codes"
    if ax is None:
        row_height = 0.85 + 0.18 * (labels is not None) + 0.12 * (paths is not None)
        size = (0.85 * (k + 1) + 0.2, row_height * len(queries) + 0.5)
        fig, axes = plt.subplots(*tiles.shape[:2], figsize=size, squeeze=False, layout="compressed")
        fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
        for (row, col), panel in np.ndenumerate(axes):
            panel.imshow(tiles[row, col], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            panel.set(xticks=[], yticks=[])
            for spine in panel.spines.values():
                spine.set(edgecolor="red", linewidth=3) if col == 0 else spine.set_linewidth(0.3)
            if (row, col) in titles:
                text, colour = titles[row, col]
                panel.set_title(text, color=colour, fontsize=7, pad=2)
            panel.set_xlabel(names.get((row, col), ""), fontsize=5, labelpad=1)
        fig.suptitle(textwrap.fill(title, int(14 * size[0])), fontsize=9)
        return fig
    b = max(1, max(tiles.shape[2:4]) // 8)
    tiles = np.repeat(tiles[..., None], 3, axis=-1) if tiles.ndim == 4 else tiles
    cells = np.ones((*tiles.shape[:2], tiles.shape[2] + 4 * b, tiles.shape[3] + 4 * b, 3))
    cells[:, 0, b:-b, b:-b] = (1.0, 0.0, 0.0)  # a red frame inside a white margin
    cells[:, :, 2 * b : -2 * b, 2 * b : -2 * b] = tiles
    height, width = cells.shape[2:4]
    ax.imshow(cells.transpose(0, 2, 1, 3, 4).reshape(len(queries) * height, -1, 3))
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    box = dict(facecolor="white", alpha=0.8, pad=0.5, linewidth=0)
    for (row, col), (text, colour) in titles.items():
        xy = (col * width + 2 * b, row * height + 2 * b)
        ax.text(*xy, text, color=colour, fontsize=6, va="top", bbox=box)
    return ax.figure


def plot_embedding(
    codes: np.ndarray,
    labels=None,
    ax: Axes | None = None,
    method: str = "pca",
    random_state: int = 0,
    max_points: int = 5000,
) -> Figure:
    """A 2-D map of the codes (PCA or t-SNE), coloured by label when labels are given.

    Parameters
    ----------
    codes : array of shape (n, n_features)
    labels : sequence of length n, optional
        Up to 20 classes get a colour each and a legend, outside the axes on the right;
        more classes of numbers a colour scale.
    ax : matplotlib Axes, optional
        Where to draw; None makes a new figure.
    method : {"pca", "tsne"}, default="pca"
    random_state : int, default=0
        Seeds the subsample, t-SNE and the order in which the points are drawn.
    max_points : int, default=5000
        Above this many codes, a random subsample of ``max_points`` is mapped (the title
        says so).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> print(plot_embedding(X, labels=y, max_points=500).axes[0].get_title())
    PCA of 64-dimensional codes
    500 of 1797 points, a random subsample (seed 0)
    """
    plt = _pyplot()
    codes = _rows_of(codes, labels=labels).astype(float)
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne'; got {method!r}.")
    if len(codes) < 3 or codes.shape[1] < 2:
        raise ValueError(f"A 2-D map needs 3 or more codes of 2 or more features: {codes.shape}.")
    rng, rows = np.random.default_rng(random_state), np.arange(len(codes))
    title = f"{'PCA' if method == 'pca' else 't-SNE'} of {codes.shape[1]}-dimensional codes"
    if len(codes) > max_points:
        rows = np.sort(rng.choice(len(codes), max_points, replace=False))
        title += f"\n{max_points} of {len(codes)} points, a random subsample (seed {random_state})"
    if method == "pca":
        pca = PCA(2, random_state=random_state)
        xy = pca.fit_transform(codes[rows])
        xlabel, ylabel = [
            f"PC {i} ({r:.0%} of variance)" for i, r in enumerate(pca.explained_variance_ratio_, 1)
        ]
    else:
        perplexity = min(30.0, (len(rows) - 1) / 3)
        tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=random_state)
        xy = tsne.fit_transform(codes[rows])
        xlabel, ylabel = "t-SNE 1", "t-SNE 2"
    if ax is None:
        size = (5.0 + 1.2 * (labels is not None), 4.6)
        fig, ax = plt.subplots(figsize=size, layout="constrained")
    order = rng.permutation(len(rows))  # drawn shuffled, so no class hides the others
    xy, style = xy[order], dict(s=float(np.clip(15000 / len(rows), 5, 40)), alpha=0.7, lw=0)
    if labels is None:
        ax.scatter(*xy.T, color="tab:blue", **style)
    else:
        labels = np.asarray(labels)[rows][order]
        classes, index = np.unique(labels, return_inverse=True)
        if len(classes) > 20 and labels.dtype.kind in "iuf":
            points = ax.scatter(*xy.T, c=labels, cmap="viridis", **style)
            ax.figure.colorbar(points, ax=ax, label="label")
        else:
            cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
            colours = cmap(np.arange(len(classes)) % cmap.N)
            ax.scatter(*xy.T, color=colours[index], **style)
            handles = [
                plt.Line2D([], [], ls="", marker="o", color=colour, label=str(name))
                for name, colour in zip(classes, colours, strict=True)
            ]
            outside = dict(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
            ax.legend(handles=handles, title="label", ncols=math.ceil(len(classes) / 25), **outside)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.title.set_fontsize(10)
    return ax.figure
