"""One folder that shows a collection of images by their codes, as a page to browse.

:func:`browse` writes a folder that opens from disk (``file://``) in a browser, with no
server and no network: ``index.html`` with ``browse.js`` and ``browse.css`` (files of this
package, ``dimlearn/browse_page/``), the thumbnails as JPEG sprite sheets, and the data as
JavaScript files that hand base64 of little-endian arrays to the page (a page opened from
disk may run scripts beside it, but not fetch files):

======================  =============================================================
``index.html``          the page (with ``browse.js``, ``browse.css``)
``sprites/N.jpg``       thumbnails, in the order of a Z-curve over the map, so that the
                        images near one another on the map share sheets (the page loads
                        a sheet when it first draws one of its images)
``data/meta.js``        sizes, the map's method, the sheets, the classes, the training
                        history (JSON)
``data/points.js``      map coordinates (float32), each image's mean colour (uint8 RGB),
                        its sprite slot (uint32) and label index (uint16)
``data/names.js``       the images' names (JSON)
``data/neighbours.js``  the k nearest other images of each image (int32) and their
                        distances (float32), as :class:`~sklearn.neighbors.NearestNeighbors`
                        gives them
``codes.npy``           the codes (float32), ``names.txt`` their names, one a line
======================  =============================================================

Pillow encodes the sprite sheets (``pip install 'dimlearn[browse]'``); ``method="umap"``
needs umap-learn (``pip install 'dimlearn[umap]'``). Both are imported when needed.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import urllib.parse
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from ._version import __version__
from .inputs import _guess_channels_last
from .settings import TERM_NAMES, WEIGHT_NAMES

PAGE_FILES = ("index.html", "browse.js", "browse.css")
"""The page itself: package data under ``dimlearn/browse_page/``, copied as they are."""
METHODS = ("pca", "tsne", "umap")
SHEET_SIDE = 2048
"""Sprite sheets are at most this many pixels a side (well under every browser's limit)."""
JPEG_QUALITY = 90
_CHUNK = 4096  # images converted at a time
_HISTORY_KEYS = ("train_loss", "valid_loss", *(f"train_{term}" for term in TERM_NAMES))


def browse(
    estimator,
    images,
    out: str | os.PathLike[str],
    *,
    paths: Sequence[str] | None = None,
    labels=None,
    codes: np.ndarray | None = None,
    method: str = "pca",
    metric: str = "cosine",
    k: int = 10,
    thumbnails: np.ndarray | None = None,
    thumb_size: int = 64,
    random_state: int = 0,
    title: str | None = None,
) -> Path:
    """Write a folder with a page that maps a collection of images by their codes.

    The page draws the 2-D map of the codes with the images on it (dots when zoomed out),
    pans and zooms; hovering an image enlarges it, clicking one lists its ``k`` nearest
    neighbours with their distances; a search box finds an image by name; a lasso selects
    images, whose names can be copied or downloaded; with labels, points are coloured by
    class and a legend hides classes; the training curves of ``estimator`` are a click away.
    Open ``out/index.html`` in a browser; the folder can be moved or shared whole.

    Parameters
    ----------
    estimator : DeepInfomaxTransformer or None
        A fitted model: it computes the codes (unless ``codes`` is given), its image layout
        tells how to show ``images``, and its training history is drawn. None needs
        ``codes`` and images shaped ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``.
    images : array of n images
        As the model takes them (a ``np.memmap`` is read in chunks). uint8 is shown as it
        is; other values in [0, 1] are scaled to 0..255, and values outside [0, 1]
        stretched to 0..255 over all the images.
    out : path
        The folder to write; created if need be. A folder that holds other files than a
        former ``browse`` wrote is refused.
    paths : sequence of n str, optional
        The files the images came from. The page names each image by its path relative to
        the files' common folder, and links to the file (relative to ``out``) where it
        exists. Without them, images are named ``0``, ``1``, ...
    labels : sequence of n, optional
        Class of each image: the points are coloured by class, with a legend.
    codes : array of shape (n, n_features), optional
        The codes, if already computed: ``estimator.transform(images)`` otherwise.
    method : {"pca", "tsne", "umap"}, default="pca"
        The 2-D map: PCA of the codes (L2-normalised first when ``metric`` is cosine),
        scikit-learn's t-SNE, or UMAP (umap-learn, ``pip install 'dimlearn[umap]'``),
        both with ``metric``.
    metric : str, default="cosine"
        Distance between codes, as :class:`~sklearn.neighbors.NearestNeighbors` takes it.
    k : int, default=10
        Neighbours listed per image (n - 1 when there are fewer other images).
    thumbnails : array of n images, optional
        What to show instead of ``images`` (the same images at a larger size, say);
        ``(n, H, W)`` or ``(n, H, W, C)``.
    thumb_size : int, default=64
        Images larger than this are shrunk to fit a square of this side for the page.
    random_state : int, default=0
        Seeds t-SNE and UMAP.
    title : str, optional
        The page's title; ``"dimlearn browse"`` and the number of images otherwise.

    Returns
    -------
    pathlib.Path
        The page, ``out/index.html``.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn.datasets import load_digits
    >>> from dimlearn import DeepInfomaxTransformer
    >>> X, y = load_digits(return_X_y=True)
    >>> images = X[:300].reshape(-1, 8, 8) / 16
    >>> dim = DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=8, random_state=0)
    >>> folder = tempfile.TemporaryDirectory()
    >>> page = browse(dim.fit(images), images, folder.name, labels=y[:300], k=5)
    >>> sorted(p.name for p in page.parent.iterdir())
    ['browse.css', 'browse.js', 'codes.npy', 'data', 'index.html', 'names.txt', 'sprites']
    >>> folder.cleanup()
    """
    image_module = _pillow()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    out = Path(out)
    _check_out(out)
    layout = None if estimator is None else _image_layout(estimator)
    n = len(images)
    if codes is None:
        if estimator is None:
            raise ValueError("browse needs an estimator or the codes.")
        codes = estimator.transform(images)
    codes = np.asarray(codes, dtype=np.float32)
    if codes.ndim != 2 or len(codes) != n:
        raise ValueError(f"codes must be (n, n_features) for the {n} images; got {codes.shape}.")
    if n < 2:
        raise ValueError(f"browse needs 2 or more images; got {n}.")
    for name, column in (("paths", paths), ("labels", labels), ("thumbnails", thumbnails)):
        if column is not None and len(column) != n:
            raise ValueError(f"{name} has {len(column)} rows for {n} images.")
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}.")
    if not isinstance(thumb_size, int | np.integer) or thumb_size < 8:
        raise ValueError(f"thumb_size must be an int of 8 or more; got {thumb_size!r}.")
    k = min(int(k), n - 1)

    neighbours, distances = nearest_others(codes, k, metric)
    xy, map_name = _map(codes, method, metric, random_state)
    shown = _as_rgb(thumbnails if thumbnails is not None else images, layout)
    names, link_base = _names(paths, n, out)

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("data", "sprites"):
        shutil.rmtree(out / stale, ignore_errors=True)
    (out / "data").mkdir()
    (out / "sprites").mkdir()
    slot = np.empty(n, dtype=np.uint32)
    slot[_z_order(xy)] = np.arange(n, dtype=np.uint32)
    sprite, colour = _write_sprites(image_module, shown, slot, thumb_size, out / "sprites")
    label_index, classes = _labels(labels)

    meta = {
        "format": 1,
        "title": title or f"dimlearn browse: {n:,} images",
        "n": n,
        "k": k,
        "metric": metric,
        "map": map_name,
        "view": _view(xy),
        "sprite": sprite,
        "classes": classes,
        "link_base": link_base,
        "codes": {"dims": int(codes.shape[1])},
        "model": _model(estimator),
        "history": _history(estimator),
    }
    meta["dimlearn"] = __version__
    _write_js(out / "data" / "meta.js", "meta", meta)
    points = {
        "xy": _b64(xy.astype("<f4")),
        "colour": _b64(colour),
        "slot": _b64(slot.astype("<u4")),
        "label": None if label_index is None else _b64(label_index.astype("<u2")),
    }
    _write_js(out / "data" / "points.js", "points", points)
    _write_js(out / "data" / "names.js", "names", names)
    pairs = {"ids": _b64(neighbours.astype("<i4")), "dist": _b64(distances.astype("<f4"))}
    _write_js(out / "data" / "neighbours.js", "neighbours", pairs)
    np.save(out / "codes.npy", codes)
    (out / "names.txt").write_text("".join(name + "\n" for name in names), "utf-8")
    page = resources.files("dimlearn") / "browse_page"
    for name in PAGE_FILES:
        (out / name).write_bytes((page / name).read_bytes())
    return out / "index.html"


def nearest_others(codes: np.ndarray, k: int, metric: str = "cosine"):
    """Each row's ``k`` nearest other rows and their distances, as ``NearestNeighbors``
    finds them (the row itself left out; where twins hide it, the first ``k`` found).

    Examples
    --------
    >>> codes = np.array([[0.0], [1.0], [3.0], [7.0]])
    >>> ids, dist = nearest_others(codes, 2, "euclidean")
    >>> ids.tolist(), dist.tolist()
    ([[1, 2], [0, 2], [1, 0], [2, 1]], [[1.0, 3.0], [1.0, 2.0], [2.0, 3.0], [4.0, 6.0]])
    """
    index = NearestNeighbors(n_neighbors=k + 1, metric=metric).fit(codes)
    distances, found = index.kneighbors(codes)
    own = found == np.arange(len(codes))[:, None]
    keep = ~own
    keep[~own.any(axis=1), k] = False  # no self among the k + 1: drop the farthest
    return found[keep].reshape(len(codes), k), distances[keep].reshape(len(codes), k)


def _pillow():
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "browse needs Pillow to write the thumbnails: pip install 'dimlearn[browse]'"
        ) from error
    return Image


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; browse writes a folder.")
    if out.is_dir() and any(out.iterdir()) and not (out / "data" / "meta.js").is_file():
        raise ValueError(
            f"{out} is a folder with other files in it; give a new or empty folder "
            "(a folder that browse wrote before is rewritten)."
        )


def _image_layout(estimator):
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "layout_")
    layout = estimator.layout_
    if layout.kind != "image":
        raise ValueError("browse shows images, but this model was fitted on tabular rows.")
    return layout


def _as_rgb(images, layout):
    """A function ``rows -> uint8 (m, H, W, 3)`` that reads the images a chunk at a time."""
    n = len(images)
    shape = tuple(images.shape[1:])
    if layout is not None and np.prod(shape) == np.prod(layout.image_shape):
        image_shape, channels_last = tuple(layout.image_shape), layout.channels_last
    elif len(shape) == 2:
        image_shape, channels_last = (*shape, 1), True
    elif len(shape) == 3:
        image_shape, channels_last = shape, _guess_channels_last(shape, "an image of shape")
    else:
        raise ValueError(f"images must be (n, H, W), (n, H, W, C) or (n, C, H, W); got {shape}.")
    channels = image_shape[-1] if channels_last else image_shape[0]
    if channels not in (1, 3, 4):
        raise ValueError(f"Images need 1, 3 or 4 channels to be shown; got {channels}.")
    scale = None
    if np.asarray(images[:1]).dtype != np.uint8:
        low = min(float(np.nanmin(images[i : i + _CHUNK])) for i in range(0, n, _CHUNK))
        high = max(float(np.nanmax(images[i : i + _CHUNK])) for i in range(0, n, _CHUNK))
        scale = (0.0, 1.0) if low >= 0 and high <= 1 else (low, high - low or 1.0)

    def rows(start: int, stop: int) -> np.ndarray:
        chunk = np.asarray(images[start:stop]).reshape(stop - start, *image_shape)
        if not channels_last:
            chunk = np.moveaxis(chunk, 1, -1)
        if scale is not None:
            floats = (np.nan_to_num(chunk.astype(np.float32)) - scale[0]) / scale[1]
            chunk = np.clip(np.rint(floats * 255), 0, 255).astype(np.uint8)
        if chunk.shape[-1] == 4:  # alpha over white
            alpha = chunk[..., 3:].astype(np.float32) / 255
            chunk = np.rint(chunk[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        elif chunk.shape[-1] == 1:
            chunk = np.repeat(chunk, 3, axis=-1)
        return chunk

    rows.n = n
    rows.height_width = image_shape[:2] if channels_last else image_shape[1:]
    return rows


def _write_sprites(Image, rows, slot, thumb_size: int, folder: Path):
    """JPEG sheets of the thumbnails, image ``i`` in cell ``slot[i]``; the sheets' layout
    (for meta.js) and each image's mean colour."""
    n = rows.n
    height, width = rows.height_width
    shrink = min(1.0, thumb_size / max(height, width))
    cell_w, cell_h = max(1, round(width * shrink)), max(1, round(height * shrink))
    cols, sheet_rows = max(1, SHEET_SIDE // cell_w), max(1, SHEET_SIDE // cell_h)
    per_sheet = cols * sheet_rows
    n_sheets = math.ceil(n / per_sheet)
    colour = np.empty((n, 3), dtype=np.uint8)
    order = np.argsort(slot)  # images by slot: sheet after sheet
    sheets = []
    for s in range(n_sheets):
        members = order[s * per_sheet : (s + 1) * per_sheet]
        used_rows = math.ceil(len(members) / cols)
        pixels = np.zeros((used_rows * cell_h, cols * cell_w, 3), dtype=np.uint8)
        for start in range(0, len(members), _CHUNK):
            ids = members[start : start + _CHUNK]
            sort = np.argsort(ids)  # read rows in increasing order (memory maps, h5 arrays)
            chunk = np.empty((len(ids), cell_h, cell_w, 3), dtype=np.uint8)
            chunk[sort] = _fit(Image, _take(rows, ids[sort]), cell_w, cell_h)
            colour[ids] = chunk.reshape(len(ids), -1, 3).mean(axis=1).round().astype(np.uint8)
            for j, thumb in enumerate(chunk, start):
                row, col = divmod(j, cols)
                pixels[row * cell_h : (row + 1) * cell_h, col * cell_w : (col + 1) * cell_w] = thumb
        name = f"{s}.jpg"
        Image.fromarray(pixels).save(folder / name, "JPEG", quality=JPEG_QUALITY)
        sheets.append({"file": f"sprites/{name}", "width": cols * cell_w, "height": len(pixels)})
    layout = {"w": cell_w, "h": cell_h, "cols": cols, "per_sheet": per_sheet, "sheets": sheets}
    return layout, colour


def _take(rows, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (sorted) of the images, reading contiguous runs as slices."""
    parts, start = [], 0
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    for stop in [*breaks.tolist(), len(ids)]:
        parts.append(rows(int(ids[start]), int(ids[stop - 1]) + 1))
        start = stop
    return np.concatenate(parts)


def _fit(Image, chunk: np.ndarray, width: int, height: int) -> np.ndarray:
    if chunk.shape[1:3] == (height, width):
        return chunk
    box = Image.Resampling.LANCZOS
    return np.stack([np.asarray(Image.fromarray(a).resize((width, height), box)) for a in chunk])


def _map(codes: np.ndarray, method: str, metric: str, random_state: int):
    """2-D coordinates of the codes, scaled into [-0.5, 0.5] along the longer side, and
    what the page calls the map."""
    dims = codes.shape[1]
    codes = codes.astype(np.float64)
    if method == "pca":
        if metric == "cosine":
            codes = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
        if dims >= 2:
            xy = PCA(2, random_state=random_state).fit_transform(codes)
        else:
            xy = np.column_stack([codes[:, 0], np.zeros(len(codes))])
        name = f"PCA of the {dims}-d codes" + (" (L2-normalised)" if metric == "cosine" else "")
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(codes) - 1) / 3)
        tsne = TSNE(2, perplexity=perplexity, metric=metric, init="pca", random_state=random_state)
        xy, name = tsne.fit_transform(codes), f"t-SNE of the {dims}-d codes ({metric})"
    else:
        try:
            import umap
        except ImportError as error:
            raise ImportError(
                "the UMAP map needs umap-learn: pip install 'dimlearn[umap]'"
            ) from error
        reducer = umap.UMAP(n_components=2, metric=metric, random_state=random_state)
        with warnings.catch_warnings():  # that a seed makes it use one thread: known
            warnings.filterwarnings("ignore", "n_jobs value", UserWarning)
            xy = reducer.fit_transform(codes)
        name = f"UMAP of the {dims}-d codes ({metric})"
    xy = np.asarray(xy, dtype=np.float64)
    xy -= (xy.max(axis=0) + xy.min(axis=0)) / 2
    xy /= max(float(np.ptp(xy, axis=0).max()), 1e-12)
    return xy.astype(np.float32), name


def _view(xy: np.ndarray) -> list[float]:
    """The box the page shows first: all but the farthest 0.2% of points on each side."""
    low, high = np.quantile(xy, [0.002, 0.998], axis=0)
    pad = (high - low) * 0.04 + 1e-3
    return [round(float(v), 6) for v in (*(low - pad), *(high + pad))]


def _z_order(xy: np.ndarray) -> np.ndarray:
    """Indices of the points along a Z-curve (Morton order) over the map."""
    cells = np.clip((xy + 0.5) * 65535, 0, 65535).astype(np.uint32)

    def spread(v):  # 16 bits to the even bits of 32
        v = (v | (v << 8)) & 0x00FF00FF
        v = (v | (v << 4)) & 0x0F0F0F0F
        v = (v | (v << 2)) & 0x33333333
        return (v | (v << 1)) & 0x55555555

    return np.argsort(spread(cells[:, 0]) | (spread(cells[:, 1]) << 1), kind="stable")


def _names(paths, n: int, out: Path):
    """The images' names (relative to the files' common folder) and the URL of that
    folder relative to ``out``, where every file exists; None otherwise."""
    if paths is None:
        return [str(i) for i in range(n)], None
    paths = [os.fspath(p) for p in paths]
    try:
        common = os.path.commonpath([os.path.abspath(p) for p in paths])
    except ValueError:  # paths on different drives
        return paths, None
    if os.path.isfile(common):  # a single file
        common = os.path.dirname(common)
    names = [Path(os.path.relpath(os.path.abspath(p), common)).as_posix() for p in paths]
    if not all(os.path.isfile(p) for p in paths):
        return names, None
    try:
        base = Path(os.path.relpath(common, os.path.abspath(out))).as_posix()
    except ValueError:  # another drive than out: an absolute file URL
        return names, Path(common).as_uri() + "/"
    return names, urllib.parse.quote(base) + "/"


def _labels(labels):
    if labels is None:
        return None, None
    labels = np.asarray(labels)
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) > 65535:
        raise ValueError(f"labels hold {len(classes)} classes; the page shows up to 65535.")
    counts = np.bincount(index, minlength=len(classes))
    return index, [{"name": str(c), "count": int(m)} for c, m in zip(classes, counts, strict=True)]


def _model(estimator):
    if estimator is None:
        return None
    params = estimator.get_params()
    described = {
        "class": type(estimator).__name__,
        "latent_dim": params.get("latent_dim"),
        "sample_shape": list(getattr(estimator, "sample_shape_", ())),
        "epochs": getattr(estimator, "n_iter_", None),
    }
    for name in ("precision_", "views_", "flip_", "device_"):
        value = getattr(estimator, name, None)
        described[name.rstrip("_")] = None if value is None else str(value)
    described["weights"] = {w: params[w] for w in WEIGHT_NAMES if w in params}
    return described


def _history(estimator):
    if estimator is None or not getattr(estimator, "history_", None):
        return []
    history = []
    for entry in estimator.history_:
        row = {"epoch": float(entry["epoch"]) - 1 + float(entry.get("epoch_fraction", 1.0))}
        for key in _HISTORY_KEYS:
            value = entry.get(key)
            if value is not None and math.isfinite(float(value)):
                row[key] = round(float(value), 6)
        history.append(row)
    return history


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _write_js(path: Path, name: str, value) -> None:
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    path.write_text(f"dimBrowseData({json.dumps(name)},{text});\n", "ascii")
