"""dimlearn browse: the folder it writes, the command, and the page in a real browser.

The browser tests (marker ``browser``) drive the system's Chromium (Debian's ``chromium``
package) headless through Playwright, with no browser download; they skip, saying why,
where either is missing. Set DIMLEARN_SCREENSHOTS to a folder to keep their screenshots.
"""

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from dimlearn import load, load_images
from dimlearn.browse import PAGE_FILES, browse, nearest_others
from dimlearn.cli import main

Image = pytest.importorskip("PIL.Image")

FIT = ["--size", "16", "--max-epochs", "2", "--width", "4", "--latent-dim", "8", "-q"]
N_PHOTOS = 240
K = 6


def read_data(folder: Path, name: str):
    """What ``data/NAME.js`` hands to the page."""
    text = (folder / "data" / f"{name}.js").read_text("ascii")
    prefix = f'dimBrowseData("{name}",'
    assert text.startswith(prefix) and text.endswith(");\n")
    return json.loads(text[len(prefix) : -3])


def array(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, digits):
    """240 digits as 16x16 RGB PNGs named by label, their labels in a file."""
    X, y = digits
    folder = tmp_path_factory.mktemp("photos")
    tint = np.array([[1.0, 0.6, 0.3], [0.3, 0.8, 1.0], [1.0, 1.0, 1.0]])
    for i in range(N_PHOTOS):
        grey = X[i].reshape(8, 8) * 15.9
        pixels = (grey[..., None] * tint[i % 3]).astype(np.uint8)
        Image.fromarray(pixels).resize((16, 16), Image.NEAREST).save(
            folder / f"d{i:03d}_{y[i]}.png"
        )
    (folder.parent / "labels.txt").write_text("\n".join(str(v) for v in y[:N_PHOTOS]))
    return folder


@pytest.fixture(scope="module")
def model(photos, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    assert main(["fit", str(photos), "--out", str(path), *FIT]) == 0
    return path


@pytest.fixture(scope="module")
def page(model, photos, tmp_path_factory):
    """The folder `dimlearn browse` writes for the photos, with labels."""
    out = tmp_path_factory.mktemp("browse") / "page"
    labels = photos.parent / "labels.txt"
    args = ["browse", str(model), str(photos), "--out", str(out), "--labels", str(labels)]
    assert main([*args, "-k", str(K)]) == 0
    return out


@pytest.fixture(scope="module")
def expected(model, photos):
    """Names, codes and labels computed here, without the page's files."""
    images, paths = load_images(photos, 16)
    codes = load(model).transform(images)
    names = [Path(p).name for p in paths]
    return names, codes, [name.split("_")[1][:-4] for name in names]


def test_the_folder_holds_the_page_and_its_data(page, photos, expected):
    names, codes, labels = expected
    assert {p.name for p in page.iterdir()} == {
        *PAGE_FILES,
        "data",
        "sprites",
        "codes.npy",
        "names.txt",
    }
    meta = read_data(page, "meta")
    assert (meta["n"], meta["k"], meta["metric"]) == (N_PHOTOS, K, "cosine")
    assert meta["map"] == "PCA of the 8-d codes (L2-normalised)"
    assert [c["name"] for c in meta["classes"]] == sorted(set(labels))
    assert sum(c["count"] for c in meta["classes"]) == N_PHOTOS
    assert [e["epoch"] for e in meta["history"]] == [1.0, 2.0]
    linked = page / urllib.parse.unquote(meta["link_base"])  # the page links to the files
    assert linked.resolve() == photos.resolve()
    assert read_data(page, "names") == names
    assert (page / "names.txt").read_text().splitlines() == names
    np.testing.assert_array_equal(np.load(page / "codes.npy"), codes)

    points = read_data(page, "points")
    xy = array(points["xy"], "<f4").reshape(-1, 2)
    assert xy.shape == (N_PHOTOS, 2) and np.abs(xy).max() <= 0.5 + 1e-6
    slot = array(points["slot"], "<u4")
    assert sorted(slot.tolist()) == list(range(N_PHOTOS))  # one sprite cell each
    classes = [c["name"] for c in meta["classes"]]
    assert [classes[i] for i in array(points["label"], "<u2")] == labels

    sprite = meta["sprite"]
    assert (sprite["w"], sprite["h"]) == (16, 16)  # the model's size: no larger pictures
    sheet = Image.open(page / sprite["sheets"][0]["file"])
    assert sheet.size == (sprite["sheets"][0]["width"], sprite["sheets"][0]["height"])

    pairs = read_data(page, "neighbours")
    ids = array(pairs["ids"], "<i4").reshape(N_PHOTOS, K)
    dist = array(pairs["dist"], "<f4").reshape(N_PHOTOS, K)
    index = NearestNeighbors(n_neighbors=K + 1, metric="cosine").fit(codes)
    want_dist, want = index.kneighbors(codes)
    assert (want[:, 0] == np.arange(N_PHOTOS)).all()  # no twins among these images
    np.testing.assert_array_equal(ids, want[:, 1:])
    np.testing.assert_allclose(dist, want_dist[:, 1:], rtol=1e-6, atol=1e-7)


def test_nearest_others_leaves_the_image_out_even_among_twins():
    codes = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.1]])
    ids, dist = nearest_others(codes, 2, "euclidean")
    assert all(i not in row for i, row in enumerate(ids))
    assert sorted(ids[0].tolist()) == [1, 2] and dist[0].tolist() == [0.0, 0.0]
    assert ids[3].tolist()[0] == 4


def test_thumbnails_of_other_layouts_and_values(tmp_path):
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(30, 3, 40, 20)).astype(np.float32)  # channels first, any range
    codes = rng.normal(size=(30, 5))
    page = browse(None, floats, tmp_path / "f", codes=codes, thumb_size=16, k=3)
    meta = read_data(page.parent, "meta")
    assert (meta["sprite"]["w"], meta["sprite"]["h"]) == (8, 16)  # shrunk to fit 16, kept 2:1
    assert meta["history"] == [] and meta["model"] is None and meta["classes"] is None
    assert read_data(page.parent, "names")[:3] == ["0", "1", "2"]
    grey = rng.random(size=(30, 12, 12))  # values in [0, 1]
    with threadpool_limits(1):  # Barnes-Hut t-SNE's OpenMP threads crawl on a busy machine
        page = browse(None, grey, tmp_path / "g", codes=codes, method="tsne", k=50)
    assert read_data(page.parent, "meta")["k"] == 29  # every other image
    mean = array(read_data(page.parent, "points")["colour"], "u1").reshape(-1, 3)
    np.testing.assert_allclose(mean[:, 0], grey.reshape(30, -1).mean(axis=1) * 255, atol=3)


def test_a_folder_of_other_files_is_refused_and_a_page_folder_rewritten(tmp_path):
    codes = np.random.default_rng(0).normal(size=(10, 4))
    images = np.zeros((10, 8, 8), dtype=np.uint8)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="other files in it"):
        browse(None, images, tmp_path / "mine", codes=codes)
    page = browse(None, images, tmp_path / "page", codes=codes)
    (page.parent / "sprites" / "99.jpg").write_bytes(b"stale")
    browse(None, images, tmp_path / "page", codes=codes)
    assert [p.name for p in (page.parent / "sprites").iterdir()] == ["0.jpg"]


def test_the_page_files_are_package_data():
    from importlib import resources

    folder = resources.files("dimlearn") / "browse_page"
    assert all((folder / name).is_file() for name in PAGE_FILES)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert "browse_page/*" in declared["dimlearn"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "{tmp}/thesis"], "other files in it"),
        (["--out", "{tmp}/p", "--labels", "{tmp}/few.txt"], "holds 3 labels for 240 images"),
        (["--out", "{tmp}/p", "--labels", "{tmp}/none.txt"], "no such labels file"),
        (["--out", "{tmp}/p", "-k", "0"], "k must be a positive int"),
        (["--out", "{tmp}/p", "--map", "umap"], "pip install 'dimlearn[umap]'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    extra, message, model, photos, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("")
    (tmp_path / "few.txt").write_text("1\n2\n3\n")
    args = ["browse", str(model), str(photos), *(a.format(tmp=tmp_path) for a in extra)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("dimlearn browse: error:")


def test_browse_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["browse", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--out" in out and "--map" in out


def test_larger_files_give_larger_pictures(model, digits, tmp_path, capsys):
    folder = tmp_path / "large"
    folder.mkdir()
    for i, digit in enumerate(digits[0][:12]):
        grey = (digit.reshape(8, 8) * 15.9).astype(np.uint8)
        Image.fromarray(grey).resize((48, 40), Image.BICUBIC).save(folder / f"{i}.png")
    for thumb, side in (["--thumb-size", "24"], 24), ([], 40):  # up to the files' own size
        out = tmp_path / f"page{side}"
        assert main(["browse", str(model), str(folder), "--out", str(out), *thumb]) == 0
        assert "a page of 12 images written to" in capsys.readouterr().out
        sprite = read_data(out, "meta")["sprite"]
        assert (sprite["w"], sprite["h"]) == (side, side)


# -- in a browser ----------------------------------------------------------------------------


def chromium_path():
    for name in (os.environ.get("DIMLEARN_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (found := shutil.which(name)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    found = chromium_path()
    if found is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium; or DIMLEARN_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright package (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=found, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def opened(browser, page):
    """The page opened from disk; the console errors and page errors it gave."""
    context = browser.new_context(viewport={"width": 1200, "height": 760}, accept_downloads=True)
    tab = context.new_page()
    errors = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto((page / "index.html").as_uri())
    tab.wait_for_function("window.dimBrowse && dimBrowse.ready && dimBrowse.neighboursLoaded()")
    yield tab, errors
    context.close()


def positions(tab) -> np.ndarray:
    return np.array(tab.evaluate("dimBrowse.pagePositions()")).reshape(-1, 2)


def inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule, as the page applies it."""
    result = np.zeros(len(points), dtype=bool)
    for (xa, ya), (xb, yb) in zip(polygon, np.roll(polygon, 1, axis=0), strict=True):
        crosses = (ya > points[:, 1]) != (yb > points[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            at = (xb - xa) * (points[:, 1] - ya) / (yb - ya) + xa
        result ^= crosses & (points[:, 0] < at)
    return result


def distance_to_edges(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    best = np.full(len(points), np.inf)
    for a, b in zip(polygon, np.roll(polygon, 1, axis=0), strict=True):
        t = np.clip(((points - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        best = np.minimum(best, np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=1))
    return best


def shot(tab, tmp_path, name):
    path = tmp_path / name
    tab.screenshot(path=path)
    if keep := os.environ.get("DIMLEARN_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


@pytest.mark.browser
def test_the_page_loads_from_disk_with_no_console_error(opened, expected):
    tab, errors = opened
    tab.mouse.move(600, 400)
    tab.mouse.wheel(0, -400)
    tab.wait_for_function("dimBrowse.sheetsLoaded() >= 1")  # the sprite sheet loads
    assert errors == []
    assert tab.title() == f"dimlearn browse: {N_PHOTOS} images"
    assert tab.evaluate("dimBrowse.timing.firstDraw") < 5000
    legend = tab.locator("#legend li").all_inner_texts()
    assert [item.split()[0] for item in legend] == sorted(set(expected[2]))


@pytest.mark.browser
def test_clicking_an_image_lists_its_nearest_neighbours(opened, expected):
    tab, errors = opened
    names, codes, _ = expected
    index = NearestNeighbors(n_neighbors=K + 1, metric="cosine").fit(codes)
    for i in (17, 201):
        tab.evaluate(f"dimBrowse.centreOn({i}, 3)")
        others = np.delete(positions(tab), i, axis=0)
        xy = positions(tab)[i]
        assert np.min(np.linalg.norm(others - xy, axis=1)) > 0.5  # nothing on top of it
        tab.mouse.move(*xy)
        assert tab.locator("#tip").inner_text().startswith(names[i])  # hovered: named, enlarged
        tab.mouse.click(*xy)
        tab.wait_for_function(f"document.querySelector('#d-name').textContent === '{names[i]}'")
        items = tab.locator("#d-neighbours li")
        shown = [int(v) for v in items.evaluate_all("items => items.map(li => li.dataset.index)")]
        listed = items.locator(".nb-name").all_inner_texts()
        distances = [float(d) for d in items.locator(".nb-dist").all_inner_texts()]
        want_dist, want = index.kneighbors(codes[i : i + 1])
        assert shown == want[0, 1:].tolist()
        assert listed == [names[j] for j in want[0, 1:]]
        np.testing.assert_allclose(distances, want_dist[0, 1:], atol=5.1e-5)
    assert errors == []


@pytest.mark.browser
def test_the_name_search_finds_a_file_and_flies_to_it(opened, expected):
    tab, errors = opened
    names = expected[0]
    target = names[123]
    tab.fill("#search", target[:5])  # the start of a name: a list of candidates
    assert target in tab.locator("#matches li").all_inner_texts()
    tab.fill("#search", target)
    tab.press("#search", "Enter")
    tab.wait_for_function(f"document.querySelector('#d-name').textContent === '{target}'")
    tab.wait_for_timeout(900)  # the flight
    view = tab.evaluate("dimBrowse.view()")
    box = tab.locator("#map").bounding_box()
    centre = np.array([box["x"] + view["width"] / 2, box["y"] + view["height"] / 2])
    np.testing.assert_allclose(positions(tab)[123], centre, atol=2)
    tab.fill("#search", "no such file anywhere")
    assert tab.locator("#matches li").all_inner_texts() == ["No image has this in its name"]
    assert errors == []


@pytest.mark.browser
def test_a_lasso_selection_exports_the_names_inside_it(opened, expected, tmp_path):
    tab, errors = opened
    names = expected[0]
    points = positions(tab)
    centre = np.median(points, axis=0)
    spread = np.ptp(points, axis=0) / 4
    angles = np.linspace(0, 2 * np.pi, 9)[:-1]
    radius = np.array([1.0, 0.55, 1.0, 0.8, 1.0, 0.6, 0.9, 0.7])  # not convex
    outline = np.column_stack([np.cos(angles), np.sin(angles)]) * spread * radius[:, None]
    # the first outline with no point within 1 px of its line (no ambiguity about which side
    # a point is on), moved and scaled a little around the centre until one is found: how
    # densely the points lie depends on the browser's layout, so a few tries are not enough
    candidates = (
        np.rint(centre + np.array([dx, dy]) + scale * outline)
        for scale in (1.0, 0.9, 1.1, 0.8)
        for dx in range(0, 40, 3)
        for dy in range(0, 40, 3)
    )
    for polygon in candidates:
        if distance_to_edges(points, polygon).min() > 1:
            break
    else:
        pytest.fail("no outline without a point within 1 px of its edges")
    want = sorted(names[i] for i in np.flatnonzero(inside(points, polygon)))
    assert 10 < len(want) < N_PHOTOS - 10

    tab.keyboard.down("Shift")
    tab.mouse.move(*polygon[0])
    tab.mouse.down()
    for vertex in polygon[1:]:
        tab.mouse.move(*vertex)
    tab.mouse.up()
    tab.keyboard.up("Shift")
    np.testing.assert_array_equal(tab.evaluate("dimBrowse.lastLasso"), polygon)
    assert tab.locator("#s-count").inner_text() == f"{len(want)} selected"
    assert tab.locator("#s-grid .sprite").count() == len(want)
    with tab.expect_download() as download:
        tab.click("#s-download")
    path = tmp_path / "names.txt"
    download.value.save_as(path)
    assert sorted(path.read_text().splitlines()) == want
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab.click("#s-copy")
    tab.wait_for_function("document.querySelector('#s-copy').textContent === 'Copied'")
    assert sorted(tab.evaluate("navigator.clipboard.readText()").splitlines()) == want
    assert errors == []


@pytest.mark.browser
def test_the_legend_hides_a_class(opened, expected):
    tab, errors = opened
    names, _, labels = expected
    tab.locator("#legend li").nth(3).click()  # the class "3"
    box = tab.locator("#map").bounding_box()
    corners = [(box["x"] + 5, box["y"] + 5), (box["x"] + box["width"] - 60, box["y"] + 5)]
    corners += [(box["x"] + box["width"] - 60, box["y"] + box["height"] - 5)]
    corners += [(box["x"] + 5, box["y"] + box["height"] - 5)]
    points = positions(tab)
    tab.click("#mode-lasso")
    tab.mouse.move(*corners[0])
    tab.mouse.down()
    for corner in corners[1:]:
        tab.mouse.move(*corner)
    tab.mouse.up()
    on_screen = inside(points, np.array(corners))
    want = sorted(
        n for n, lab, seen in zip(names, labels, on_screen, strict=True) if seen and lab != "3"
    )
    got = sorted(names[i] for i in tab.evaluate("dimBrowse.selection()"))
    assert got == want and len(want) > N_PHOTOS / 2
    assert errors == []


@pytest.mark.browser
def test_screenshots_of_the_map_at_two_zoom_levels(opened, tmp_path):
    tab, errors = opened
    tab.locator("#curves-button").click()
    assert tab.locator("#charts canvas").count() == 3  # total, local MI, prior
    first = shot(tab, tmp_path, "browse_whole_map.png")
    tab.locator("#curves-button").click()
    assert tab.evaluate("dimBrowse.lastFrame.images")  # 240 images: pictures at once
    view = tab.evaluate("dimBrowse.view()")
    tab.evaluate(f"dimBrowse.setView({view['cx']}, {view['cy']}, 6)")
    tab.wait_for_timeout(300)
    frame = tab.evaluate("dimBrowse.lastFrame")
    assert frame["images"] and frame["sprite"] > 30 and frame["inView"] < N_PHOTOS
    tab.evaluate("dimBrowse.open(5)")
    tab.wait_for_timeout(900)
    second = shot(tab, tmp_path, "browse_zoomed_in.png")
    for path in (first, second):
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert (
            picture.shape == (760, 1200, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 50
        )
    assert errors == []


@pytest.mark.slow
def test_the_scale_benchmark_runs_small(tmp_path):
    # in a process of its own: Playwright's sync API runs one event loop a thread
    argv = ["--n", "300", "--synthetic", "--fit-seconds", "1", "--loads", "1", "--name", "small"]
    argv += ["--pan-seconds", "0.3"]
    command = [sys.executable, "-m", "benchmarks.browse", *argv, "--out-dir", str(tmp_path)]
    root = Path(__file__).parents[1]
    subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "small.json").read_text())
    assert result["n"] == 300 and result["sizes"]["total"] > result["sizes"]["sprites"] > 0
    text = (tmp_path / "small.md").read_text()
    assert "## Folder size" in text
    if chromium_path() is not None and importlib.util.find_spec("playwright") is not None:
        assert "## In the browser" in text and "Console errors: 0." in text
        assert result["browser"]["loads"][0]["first_draw_ms"] < 5000
