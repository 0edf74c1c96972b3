"""The `dimlearn` command line, end to end on a folder of PNGs written by the test."""

import csv
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

from dimlearn import DeepInfomaxTransformer, load
from dimlearn.cli import main

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

FIT = ["--size", "16", "--max-epochs", "2", "--width", "4", "--latent-dim", "8", "-q"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, digits):
    """60 digits as 16x16 RGB PNGs named by label, and one file that is not an image."""
    X, y = digits
    folder = tmp_path_factory.mktemp("photos")
    for i in range(60):
        pixels = (X[i].reshape(8, 8) * 15.9).astype(np.uint8)
        image = Image.fromarray(pixels).resize((16, 16), Image.NEAREST).convert("RGB")
        image.save(folder / f"d{i:03d}_{y[i]}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    (folder.parent / "labels.txt").write_text("\n".join(str(v) for v in y[:60]))
    return folder


@pytest.fixture(scope="module")
def model(photos, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    assert main(["fit", str(photos), "--out", str(path), *FIT]) == 0
    return path


def test_fit_writes_a_model_file_of_the_images(model, capsys):
    dim = load(model)
    assert dim.sample_shape_ == (16, 16, 3) and dim.n_iter_ == 2 and dim.latent_dim == 8


def test_transform_writes_npy_and_csv_with_paths(model, photos, tmp_path, capsys):
    assert main(["transform", str(model), str(photos), "--out", str(tmp_path / "c.npy")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "corrupt.png" in line] == [
        f"dimlearn: warning: load_images skipped 1 unreadable image file(s): "
        f"{photos / 'corrupt.png'} (errors='raise' tells why)."
    ]
    codes = np.load(tmp_path / "c.npy")
    assert codes.shape == (60, 8) and codes.dtype == np.float32
    assert main(["transform", str(model), str(photos), "--out", str(tmp_path / "c.csv")]) == 0
    with (tmp_path / "c.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 61 and rows[0][0] == "path" and len(rows[0]) == 9
    assert rows[1][0].endswith("d000_0.png") and not any("corrupt" in r[0] for r in rows)
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], dtype=float), codes, rtol=1e-6)
    # the codes are those of the library on the same images
    from dimlearn import load_images

    with pytest.warns(UserWarning, match="corrupt.png"):
        images, _ = load_images(photos, 16)
    np.testing.assert_array_equal(load(model).transform(images), codes)


def test_search_prints_neighbours_and_draws_the_grid(model, photos, tmp_path, capsys):
    queries = [str(photos / "d000_0.png"), str(photos / "d001_1.png")]
    out = tmp_path / "grid.png"
    args = ["search", str(model), str(photos), "--query", *queries, "-k", "4", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("d000_0.png:") and printed[1].split()[1].endswith("d000_0.png")
    assert float(printed[1].split()[0]) == pytest.approx(0.0, abs=1e-5)  # itself, first
    assert sum(line.startswith("  ") for line in printed) == 8  # 2 queries x 4 neighbours
    assert Image.open(out).size[0] > Image.open(out).size[1] > 50  # 2 rows of 5 images


@pytest.mark.slow
def test_report_to_one_png_and_to_a_folder(model, photos, tmp_path):
    labels = photos.parent / "labels.txt"
    png = tmp_path / "report.png"
    args = ["report", str(model), str(photos), "--labels", str(labels), "--out", str(png)]
    assert main(args) == 0
    assert Image.open(png).size[1] > 800  # curves, neighbour grid and map, one under another
    folder = tmp_path / "report"
    assert main(["report", str(model), str(photos), "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "embedding.png",
        "history.png",
        "neighbours.png",
    ]
    assert main(["report", str(model), "--out", str(tmp_path / "curves.png")]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "{tmp}/missing", "--out", "{tmp}/m.safetensors"], "no such folder"),
        (["fit", "{tmp}/empty", "--out", "{tmp}/m.safetensors"], "No image files"),
        (["transform", "{photo}", "{photos}", "--out", "{tmp}/c.npy"], "not a dimlearn model"),
        (["transform", "{tmp}/none.safetensors", "{photos}", "--out", "{tmp}/c.npy"], "no such"),
        (["search", "{model}", "{photos}", "--query", "{tmp}/nope.png"], "query image not found"),
        (["fit", "{photos}", "--out", "{tmp}/m.safetensors", "--lr", "-1"], "lr"),
        (["fit", "{photos}", "--out", "{tmp}/m.safetensors", "--augment"], "Add --views 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, model, photos, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    values = dict(tmp=tmp_path, photos=photos, photo=photos / "d000_0.png", model=model)
    assert main([a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith(f"dimlearn {args[0]}: error:")


def test_bad_usage_exits_2_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["transform"])
    assert exit_info.value.code == 2 and "usage: dimlearn transform" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "transform", "search", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out


@pytest.mark.slow
def test_the_console_script_is_declared_and_python_m_runs(tmp_path):
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("dimlearn") == "dimlearn.cli:main"
    result = subprocess.run(
        [sys.executable, "-m", "dimlearn", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "fit" in result.stdout and "search" in result.stdout


def test_fit_takes_its_defaults_from_the_estimator():
    from dimlearn.cli import build_parser

    args = build_parser().parse_args(["fit", "photos/", "--out", "model.safetensors"])
    defaults = DeepInfomaxTransformer().get_params()
    names = ("max_epochs", "max_time", "latent_dim", "width", "batch_size", "lr", "device")
    for name in (*names, "precision"):
        assert getattr(args, name) == defaults[name], name
    assert (args.alpha, args.beta, args.gamma) == (
        defaults["alpha"],
        defaults["beta"],
        defaults["gamma"],
    )
    assert args.views == str(defaults["views"])


def test_fit_says_what_its_auto_settings_resolved_to(photos, tmp_path, capsys):
    path = tmp_path / "one_view.safetensors"
    argv = [
        "fit",
        str(photos),
        "--out",
        str(path),
        *FIT,
        "--augment",
        "--views",
        "1",
        "--device",
        "cpu",
    ]
    assert main([*argv, "--precision", "float32"]) == 0
    out = capsys.readouterr().out
    assert "on cpu, float32, 1 view, mirrored;" in out  # colour photos: flips
    fitted = load(path)
    assert (fitted.views_, fitted.precision_, fitted.augment) == (1, "float32", True)
    assert (fitted.flip, fitted.flip_) == ("auto", True)
    assert main([*argv, "--precision", "float32", "--flip", "no"]) == 0
    assert "1 view, not mirrored;" in capsys.readouterr().out
    assert (load(path).flip, load(path).flip_) == (False, False)
