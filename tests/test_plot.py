"""dimlearn.plot: each figure has the artists it promises, on a tiny fitted model."""

import copy
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from dimlearn import DeepInfomaxTransformer
from dimlearn.plot import plot_embedding, plot_history, plot_neighbours

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted(digit_images):
    X, y = digit_images
    X, y = X[:400], y[:400]
    dim = DeepInfomaxTransformer(max_epochs=3, width=4, latent_dim=8, random_state=0).fit(X)
    return dim, X, y, dim.transform(X)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def assert_saves_png(fig, tmp_path, name="figure.png"):
    path = tmp_path / name
    fig.savefig(path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def all_lines(fig):
    return [line for ax in fig.axes for line in ax.lines]


def test_history_has_a_panel_and_a_line_per_recorded_term(fitted, tmp_path):
    dim = fitted[0]
    fig = plot_history(dim)
    assert isinstance(fig, matplotlib.figure.Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "total (weighted sum)",
        "local MI (weight beta=1.0)",
        "prior (weight gamma=0.1)",
    ]
    lines = all_lines(fig)
    assert len(lines) == 3  # train_loss, train_local, train_prior
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(lines[0].get_ydata(), dim.loss_curve_)
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss (nats)" for ax in fig.axes)
    assert "3 epochs" in fig.get_suptitle()
    assert_saves_png(fig, tmp_path)


def test_history_of_every_term_with_validation_and_a_cut_epoch(fitted, tmp_path):
    dim = copy.copy(fitted[0])
    terms = ["train_loss", "valid_loss", "train_global", "train_local", "train_prior"]
    terms.append("train_local_local")
    dim.history_ = [{"epoch": e, **{t: 5.0 - e for t in terms}} for e in (1, 2, 3)]
    dim.history_[-1]["epoch_fraction"] = 0.4
    fig = plot_history(dim)
    assert len(fig.axes) == 5  # valid_loss shares the total's panel
    lines = all_lines(fig)
    assert len(lines) == len(terms)
    assert [line.get_linestyle() for line in fig.axes[0].lines] == ["-", "--"]
    np.testing.assert_allclose(lines[0].get_xdata(), [1, 2, 2.4])
    circles = [c.get_offsets() for ax in fig.axes for c in ax.collections if len(c.get_offsets())]
    assert len(circles) == len(terms)
    assert all(np.allclose(offsets, [[2.4, 2.0]]) for offsets in circles)
    assert "cut short" in fig.get_suptitle()
    assert_saves_png(fig, tmp_path)


def test_history_on_a_given_axes_draws_every_term_there(fitted):
    fig, ax = plt.subplots()
    assert plot_history(fitted[0], ax=ax) is fig
    assert len(fig.axes) == 1 and len(ax.lines) == 3
    assert len(ax.get_legend().get_texts()) == 3


def test_history_of_an_unfitted_estimator_is_refused():
    with pytest.raises(NotFittedError):
        plot_history(DeepInfomaxTransformer())


def test_neighbours_grid_shows_each_query_and_its_nearest_other_images(fitted, tmp_path):
    _, X, y, Z = fitted
    queries, k = [5, 17, 230], 4
    fig = plot_neighbours(X, Z, queries, k, labels=y)
    assert len(fig.axes) == 3 * (k + 1)
    grid = np.array(fig.axes).reshape(3, k + 1)
    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(Z)
    for row, query in enumerate(queries):
        found = [j for j in index.kneighbors(Z[[query]], return_distance=False)[0] if j != query]
        for col, image in enumerate([query, *found[:k]]):
            [drawn] = grid[row, col].images
            np.testing.assert_allclose(drawn.get_array(), X[image] / X.max())
            colour = grid[row, col].title.get_color()
            if col:
                assert to_rgba(colour) == to_rgba(
                    "tab:green" if y[image] == y[query] else "tab:red"
                )
            assert grid[row, col].get_title() == str(y[image])
        assert grid[row, 0].spines["left"].get_edgecolor() == to_rgba("red")
        assert grid[row, 1].spines["left"].get_edgecolor() != to_rgba("red")
    assert_saves_png(fig, tmp_path)


def test_neighbours_on_a_given_axes_draw_one_mosaic(fitted, tmp_path):
    _, X, y, Z = fitted
    fig, ax = plt.subplots()
    assert plot_neighbours(X, Z, [0, 1, 2], 4, ax=ax, labels=y) is fig
    [mosaic] = ax.images
    cell = 8 + 4 * 1  # an 8x8 image, a border of 1 pixel: white margin, frame, and again
    pixels = mosaic.get_array()
    assert pixels.shape == (3 * cell, 5 * cell, 3)
    np.testing.assert_array_equal(pixels[cell + 1, 1], [1, 0, 0])  # query frame: red
    np.testing.assert_array_equal(pixels[1, cell + 1], [1, 1, 1])  # a neighbour's: white
    assert len(ax.texts) == 15  # every image's label
    assert_saves_png(fig, tmp_path)


def test_neighbours_of_queries_from_another_set(fitted):
    _, X, y, Z = fitted
    train, test = slice(0, 300), slice(300, 400)
    fig = plot_neighbours(
        X[train],
        Z[train],
        [0, 50],
        3,
        labels=y[train],
        paths=[f"train/{i}.png" for i in range(300)],
        query_images=X[test],
        query_codes=Z[test],
        query_labels=y[test],
        query_paths=[f"test/q{i}.png" for i in range(100)],
    )
    grid = np.array(fig.axes).reshape(2, 4)
    found = NearestNeighbors(n_neighbors=3, metric="cosine").fit(Z[train])
    found = found.kneighbors(Z[test][[0, 50]], return_distance=False)
    np.testing.assert_allclose(grid[1, 0].images[0].get_array(), X[test][50] / X.max())
    assert [ax.get_xlabel() for ax in grid[1]] == ["q50.png", *(f"{j}.png" for j in found[1])]
    assert grid[1, 0].get_title() == str(y[test][50])


@pytest.mark.parametrize(
    "shape, shown",
    [
        ((12, 9, 10), (9, 10)),
        ((12, 9, 10, 1), (9, 10)),
        ((12, 9, 10, 3), (9, 10, 3)),
        ((12, 3, 9, 10), (9, 10, 3)),
        ((12, 9, 10, 4), (9, 10, 3)),
    ],
)
def test_neighbours_draw_grey_colour_and_channels_first_images(shape, shown):
    images = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8)
    codes = images.reshape(len(images), -1).astype(float)
    fig = plot_neighbours(images, codes, [3], 2)
    pixels = fig.axes[0].images[0].get_array()
    assert pixels.shape == shown and 0 <= pixels.min() and pixels.max() <= 1
    if len(shown) == 2:
        assert fig.axes[0].images[0].get_cmap().name == "gray"
    if shape == (12, 3, 9, 10):  # the same picture as its channels-last twin
        np.testing.assert_allclose(pixels, images[3].transpose(1, 2, 0) / 255)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(k=400), "k=400"),
        (dict(k=0), "k=0"),
        (dict(queries=[0, 400]), "row indices in"),
        (dict(queries=[-1]), "row indices in"),
        (dict(queries=[0.5]), "row indices"),
        (dict(codes=np.zeros((399, 8))), "images has 400 rows but codes has 399"),
        (dict(labels=np.zeros(10)), "labels has 10 rows"),
        (dict(query_images=np.zeros((5, 8, 8))), "pass both or neither"),
        (dict(images=np.zeros((400, 8, 8, 2))), "1, 3 or 4 channels"),
    ],
)
def test_neighbours_refuse_bad_input_clearly(fitted, change, message):
    _, X, _, Z = fitted
    arguments = dict(images=X, codes=Z, queries=[0, 1], k=3) | change
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        plot_neighbours(**arguments)


def face_colours(ax):
    return {tuple(colour) for c in ax.collections for colour in c.get_facecolors()}


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_has_a_colour_per_class(fitted, method, tmp_path):
    _, _, y, Z = fitted
    # one thread: Barnes-Hut t-SNE's OpenMP threads crawl on a busy 2-core machine
    with threadpool_limits(1):
        fig = plot_embedding(Z, y, method=method, max_points=60 if method == "tsne" else 5000)
    [ax] = fig.axes
    assert len(face_colours(ax)) == len(np.unique(y)) == 10
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(c) for c in range(10)]
    assert len(ax.collections[0].get_offsets()) == (60 if method == "tsne" else 400)
    assert ("60 of 400 points" in ax.get_title()) == (method == "tsne")
    assert_saves_png(fig, tmp_path)


def test_embedding_names_string_classes_and_draws_on_a_given_axes(fitted):
    _, _, y, Z = fitted
    names = np.array(["even", "odd"])[y % 2]
    fig, ax = plt.subplots()
    assert plot_embedding(Z, names, ax=ax) is fig
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["even", "odd"]
    assert len(face_colours(ax)) == 2


def test_embedding_without_labels_is_one_colour(fitted):
    fig = plot_embedding(fitted[3])
    assert len(face_colours(fig.axes[0])) == 1 and fig.axes[0].get_legend() is None


def test_embedding_refuses_bad_input(fitted):
    Z = fitted[3]
    with pytest.raises(ValueError, match="'pca' or 'tsne'"):
        plot_embedding(Z, method="umap")
    with pytest.raises(ValueError, match="labels has 3 rows"):
        plot_embedding(Z, labels=[0, 1, 2])


def test_missing_matplotlib_names_the_extra(fitted, monkeypatch):
    dim, X, y, Z = fitted
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    for call in (lambda: plot_history(dim), lambda: plot_neighbours(X, Z, [0], 2)):
        with pytest.raises(ImportError, match=r"pip install 'dimlearn\[plot\]'"):
            call()
    with pytest.raises(ImportError, match="dimlearn.plot"):
        plot_embedding(Z)
