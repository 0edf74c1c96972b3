"""The benchmark commands run end to end on tiny data (they are measured elsewhere, not here)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from benchmarks import quality, speed
from benchmarks.common import load_dataset, markdown_table, probe_scores
from dimlearn import DeepInfomaxTransformer
from dimlearn.settings import SETTINGS, is_routed


def run_quality(tmp_path, name, *extra):
    """Runs the quality command on tiny digits into tmp_path; returns the JSON payload."""
    args = ["--dataset", "digits", "--out", str(tmp_path), "--name", name, *extra]
    assert quality.main(args) == 0
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.slow
def test_quality_baselines_writes_table_json_and_figures(tmp_path):
    payload = run_quality(
        tmp_path, "tiny", "--budget-minutes", "0.02", "--n-train", "200", "--n-test", "100"
    )
    features = [row["features"] for row in payload["rows"]]
    assert features == [
        "raw pixels",
        "PCA-64",
        "untrained encoder: code",
        "untrained encoder: pooled local map",
        "DIM: code",
        "DIM: pooled local map",
    ]
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["torch"]
    for row in payload["rows"]:
        assert 0 <= row["linear"] <= 1 and 0 <= row["knn10_cos"] <= 1
    table = (tmp_path / "tiny.md").read_text()
    assert "| DIM: code | 64 |" in table and "cores" in table
    for metric in ("cosine", "euclidean"):
        assert (tmp_path / f"tiny_knn_{metric}.png").stat().st_size > 1000


@pytest.mark.slow
def test_quality_ablation_has_six_configs(tmp_path):
    rows = run_quality(
        tmp_path,
        "abl",
        "--study",
        "ablation",
        "--budget-minutes",
        "0.01",
        "--n-train",
        "120",
        "--n-test",
        "60",
    )["rows"]
    assert len(rows) == 6 and all(row["epochs"] >= 1 for row in rows)


def test_missing_dataset_is_skipped_with_a_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("benchmarks.common.DATA_DIR", tmp_path)
    assert quality.main(["--dataset", "cifar10", "--out", str(tmp_path)]) == 0
    assert "cifar10.npz not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_speed_benchmark_runs(tmp_path):
    args = [
        "--n-fit",
        "64",
        "--epochs",
        "1",
        "--repeats",
        "3",
        "--widths",
        "4",
        "--transform-sizes",
        "600",
        "--out",
        str(tmp_path),
    ]
    assert speed.main(args) == 0
    payload = json.loads((tmp_path / "speed.json").read_text())
    assert payload["args"]["n_fit"] == 64 and payload["wall_seconds"] > 0

    [fit] = payload["fit"]
    assert fit["model"] == "width 4" and fit["n"] == 64 and fit["epochs"] == 1
    assert fit["threads"] == speed.torch.get_num_threads()
    pairs = np.array(fit["pairs"])  # (wrapper seconds, bare torch seconds) per repeat
    assert pairs.shape == (3, 2) and np.all(np.isfinite(pairs)) and np.all(pairs > 0)
    # the reported numbers are the ones computed from the recorded times
    assert fit["ratio"] == pytest.approx(np.median(pairs[:, 0] / pairs[:, 1]), rel=1e-12)
    assert fit["wrapper_img_s"] == pytest.approx(64 / np.median(pairs[:, 0]), rel=1e-12)
    assert fit["bare_img_s"] == pytest.approx(64 / np.median(pairs[:, 1]), rel=1e-12)
    # plausibility only, wide enough for a busy machine: the two loops train the same
    # networks on the same batches, so neither can be orders of magnitude faster
    assert 0.05 < fit["ratio"] < 50

    [row] = payload["transform"]
    assert row["n"] == 600 and row["seconds"] > 0
    assert row["img_s"] == pytest.approx(600 / row["seconds"], rel=1e-12)
    assert row["input_mb"] == 600 * 32 * 32 * 3 / 2**20  # uint8 32x32x3 images
    latent_dim = speed.DeepInfomaxTransformer().latent_dim
    assert row["output_mb"] == 600 * latent_dim * 4 / 2**20  # float32 codes
    assert 0 < row["rss_before_mb"] <= row["peak_mb"]
    assert row["extra_peak_mb"] == pytest.approx(
        row["peak_mb"] - row["rss_before_mb"] - row["output_mb"]
    )

    table = (tmp_path / "speed.md").read_text()
    assert f"| width 4 | {fit['threads']} |" in table and f"| {fit['ratio']:.3f} |" in table
    assert f"| 600 | {row['img_s']:.0f} |" in table


def test_bare_loop_trains_the_module_it_builds(monkeypatch):
    built = []
    original = speed.build_module

    def spy(params, layout):
        built.append(original(params, layout))
        return built[-1]

    monkeypatch.setattr(speed, "build_module", spy)
    X = speed.synthetic_images(16)
    speed.torch.manual_seed(0)
    untouched = spy(
        speed.Settings.from_params(speed.DeepInfomaxTransformer(width=4).get_params()),
        speed.resolve_layout(X.shape[1:], None, "auto"),
    ).state_dict()
    assert speed.bare_torch_fit(X, width=4, epochs=1, batch_size=8, lr=1e-3, seed=0) > 0
    trained = built[-1].state_dict()
    assert untouched.keys() == trained.keys()
    assert not all(speed.torch.equal(untouched[k], trained[k]) for k in trained)


def test_probe_scores_on_separable_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    Z = np.eye(3)[y] * 5 + rng.normal(scale=0.1, size=(60, 3))
    scores = probe_scores(Z[::2], y[::2], Z[1::2], y[1::2])
    assert scores["linear"] == 1.0 and scores["knn10_cos"] == 1.0 and scores["p@1_euc"] == 1.0


def test_digits_split_is_reproducible():
    a, b = load_dataset("digits", 100, 50, seed=3), load_dataset("digits", 100, 50, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (100, 8, 8) and a[2].shape == (50, 8, 8)


def test_markdown_table_formats():
    table = markdown_table([{"a": 0.5, "b": 2.0}], [("a", "A", "pct"), ("b", "B", ".2f")])
    assert "| 50.0 | 2.00 |" in table


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_real_datasets_load_when_present(name):
    try:
        X_tr, y_tr, X_te, y_te, names = load_dataset(name, 50, 20, seed=0)
    except quality.DatasetMissing as missing:
        pytest.skip(str(missing))
    assert X_tr.dtype == np.uint8 and len(X_tr) == 50 and len(y_te) == 20 and len(names) == 10


@pytest.mark.slow
def test_quality_variants_study_runs_every_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "VARIANTS", quality.VARIANTS[:3:2])
    rows = run_quality(
        tmp_path,
        "var",
        "--study",
        "variants",
        "--budget-minutes",
        "0.01",
        "--n-train",
        "100",
        "--n-test",
        "50",
    )["rows"]
    assert [row["features"] for row in rows] == [label for label, _ in quality.VARIANTS]


@pytest.mark.slow
def test_quality_options_study_runs_every_option(tmp_path):
    rows = run_quality(
        tmp_path,
        "opt",
        "--study",
        "options",
        "--budget-minutes",
        "0.005",
        "--n-train",
        "120",
        "--n-test",
        "50",
        "--n-probe",
        "60",
    )["rows"]
    assert [row["features"] for row in rows] == [label for label, _ in quality.OPTIONS]


@pytest.mark.slow
def test_a_study_runs_only_the_rows_asked_for(tmp_path):
    only = ["defaults", "two views"]
    args = ["--study", "ideas", "--budget-minutes", "0.005", "--n-train", "120", "--n-test"]
    rows = run_quality(tmp_path, "ideas", *args, "50", "--only", *only)["rows"]
    assert [row["features"] for row in rows] == only


@pytest.mark.slow
def test_probes_use_a_subset_and_raw_pixels_can_be_skipped(tmp_path):
    payload = run_quality(
        tmp_path,
        "sub",
        "--budget-minutes",
        "0.01",
        "--n-train",
        "200",
        "--n-test",
        "50",
        "--n-probe",
        "80",
        "--no-raw",
        "--no-figure",
    )
    assert payload["n_train"] == 200 and payload["n_probe"] == 80
    assert payload["rows"][0]["features"] == "PCA-64"
    assert "probes fit on 80 of the train images" in (tmp_path / "sub.md").read_text()


def test_probe_rows_are_a_seeded_subset():
    rows = quality.probe_rows(100, 30, seed=0)
    assert len(set(rows)) == 30 and rows.max() < 100
    np.testing.assert_array_equal(rows, quality.probe_rows(100, 30, seed=0))
    np.testing.assert_array_equal(quality.probe_rows(10, None, seed=0), np.arange(10))


@pytest.mark.slow
def test_model_files_benchmark_measures_each_format(tmp_path):
    from benchmarks import model_files

    assert model_files.main(["--n", "8", "--out", str(tmp_path)]) == 0
    rows = {
        row["what"]: row for row in json.loads((tmp_path / "model_files.json").read_text())["rows"]
    }
    encoder = rows["encoder weights (what transform needs)"]["mb"]
    compact = rows["dimlearn.save"]
    full = rows["dimlearn.save(include_training_state=True)"]
    assert encoder < compact["mb"] <= 25  # the target for a default 32x32x3 model
    assert compact["mb"] < full["mb"] <= rows["joblib.dump"]["mb"] * 1.05
    assert all(row["same_codes"] for row in rows.values() if "same_codes" in row)
    assert "| dimlearn.save |" in (tmp_path / "model_files.md").read_text()


@pytest.mark.slow
def test_small_images_benchmark_compares_with_pca_and_the_untrained_encoder(tmp_path, monkeypatch):
    from benchmarks import small_images

    tiny = {"max_epochs": 1, "width": 4}
    settings = [("defaults (20 epochs)", tiny), ("lr=3e-4", {**tiny, "lr": 3e-4})]
    monkeypatch.setattr(small_images, "SETTINGS", settings)
    assert small_images.main(["--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "small_images.json").read_text())["rows"]
    assert [r["features"] for r in rows] == [
        "PCA-64",
        "untrained encoder: code",
        "DIM code, defaults (20 epochs)",
        "DIM code, lr=3e-4",
    ]
    assert rows[0]["linear"] > 0.9  # PCA on digits
    assert all(0.1 < r["linear"] <= 1 and 0.1 < r["p10"] <= 1 for r in rows)


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu_with_a_tiny_budget(tmp_path):
    from benchmarks import gpu

    assert gpu.main(["--tiny", "--no-quality", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    trains = [r for r in rows if r["part"] == "train"]
    assert [(r["batch"], r["setting"]) for r in trains] == [
        (b, s) for b in (128, 512) for s in ("float32 eager", "bfloat16")
    ]
    assert all(r["img_s"] > 0 and 0 <= r["data_wait_share"] < 1 for r in trains)
    assert rows[-1]["part"] == "transform" and rows[-1]["img_s"] > 0
    assert "| 512 | bfloat16 |" in (tmp_path / "gpu.md").read_text()


def test_mlp_probe_learns_separable_features():
    from benchmarks.common import mlp_probe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    Z = rng.normal(size=(300, 5)) + 4 * np.eye(3, 5)[y]
    assert mlp_probe(Z[:200], y[:200], Z[200:], y[200:], epochs=20) > 0.9


@pytest.mark.slow
def test_tables_benchmark_compares_each_table_with_pca(tmp_path, monkeypatch):
    from benchmarks import tables

    monkeypatch.setattr(tables, "SETTINGS", {"tiny": {"max_epochs": 1, "width": 2}})
    assert tables.main(["--out", str(tmp_path), "--name", "tiny_tables", "--seeds", "0"]) == 0
    rows = json.loads((tmp_path / "tiny_tables.json").read_text())["rows"]
    assert [row["features"] for row in rows[:2]] == ["PCA-3", "DIM: tiny"]  # wine: 13 -> 3
    assert len(rows) == 8 and all(0 < row["linear"] <= 1 for row in rows)
    assert all(row["train_s"] > 0 for row in rows if row["features"].startswith("DIM"))


@pytest.mark.slow
def test_time_to_quality_probes_copies_made_during_training(tmp_path, monkeypatch):
    from benchmarks import time_to_quality

    def tiny_cifar(name, n_train, n_test, seed):
        rng = np.random.default_rng(seed)
        X = rng.integers(0, 256, size=(n_train + n_test, 16, 16, 3), dtype=np.uint8)
        y = np.arange(n_train + n_test) % 10
        return X[:n_train], y[:n_train], X[n_train:], y[n_train:], []

    monkeypatch.setattr(time_to_quality, "load_dataset", tiny_cifar)
    monkeypatch.setitem(time_to_quality.PRESETS, "tiny", {"width": 2, "latent_dim": 4})
    monkeypatch.setitem(time_to_quality.LABELS, "tiny", "tiny")
    args = ["--preset", "tiny", "--budget-minutes", "0.05", "--every", "0.005"]
    args += ["--n-train", "200", "--n-probe", "100", "--n-test", "50", "--out", str(tmp_path)]
    args += ["--probe", "default"]
    assert time_to_quality.main(args) == 0
    payload = json.loads((tmp_path / "time_to_quality_tiny.json").read_text())
    minutes = [row["minutes"] for row in payload["curve"]]
    assert len(minutes) >= 2 and minutes == sorted(minutes)
    assert payload["curve"][-1]["epochs"] == payload["epochs"]
    assert [row["features"] for row in payload["final"]] == ["DIM code", "DIM conv", "PCA-4"]
    assert (tmp_path / "time_to_quality.png").stat().st_size > 1000


def test_step_profile_times_each_setting_and_splits_the_cpu_time(tmp_path):
    from benchmarks import step_profile

    args = ["--steps", "1", "--width", "2", "--batch-size", "8", "--out", str(tmp_path)]
    assert step_profile.main([*args, "--roof-size", "64"]) == 0
    payload = json.loads((tmp_path / "step_profile.json").read_text())
    rows = payload["rows"]
    assert set(payload["roof_gflops"]) == {"float32", "bfloat16"}
    for row in rows:
        assert row["gflop_per_step"] > 0
        roof = payload["roof_gflops"][row["dtype"]]
        assert row["roof_fraction"] == pytest.approx(row["gflops_per_s"] / roof)
        assert 0 < row["flops_encoder"] < 1 and 0 < row["flops_local_critic"] < 1
        shares = [row[f"flops_{p}"] for p in (*step_profile.PARTS, "pairs")]
        assert sum(shares) == pytest.approx(1.0)
    assert [row["setting"] for row in rows] == [label for label, _ in step_profile.SETTINGS]
    for row in rows:
        shares = [value for key, value in row.items() if key.startswith("share_")]
        assert row["ms_per_step"] > 0 and sum(shares) == pytest.approx(1.0)
        assert row["share_convolution"] > 0
    assert step_profile.kind_of("aten::convolution_backward") == "convolution"
    assert step_profile.kind_of("aten::addmm") == "matrix products"


def test_results_record_a_command_that_pastes_back():
    from benchmarks.common import command_line

    line = command_line("benchmarks.tables", ["--only", "MLP encoder (0.2)", "--seeds", "0"])
    assert line == "python -m benchmarks.tables --only 'MLP encoder (0.2)' --seeds 0"
    assert command_line("benchmarks.small_images", []) == "python -m benchmarks.small_images"


def test_next_level_runs_every_idea_and_probes_code_and_conv(tmp_path):
    from benchmarks import next_level

    argv = ["--dataset", "digits", "--budget-minutes", "0.005", "--n-train", "200"]
    assert next_level.main([*argv, "--n-test", "100", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "next_level.json").read_text())
    ideas = [label for label, _ in next_level.IDEAS]
    assert [r["features"] for r in payload["rows"]] == [
        f"{idea}: {level}" for idea in ideas for level in ("code", "conv")
    ]
    assert all(0.1 < r["linear"] <= 1 for r in payload["rows"])
    # each row's parameters, written as JSON (classes, functions and callbacks by name)
    assert payload["ideas"]["weight decay 1e-4"] == {
        "optimizer": "adamw",
        "optimizer__weight_decay": 1e-4,
    }
    assert payload["ideas"]["residual block"] == {"encoder": "ResidualLocalEncoder"}
    assert payload["ideas"]["EMA of weights (0.998)"] == {
        "callbacks": ["WeightAverage(decay=0.998)"]
    }
    with pytest.raises(SystemExit):
        next_level.main([*argv, "--only", "no such idea", "--out", str(tmp_path)])


def test_the_benchmarks_patch_nothing_and_every_row_is_public_parameters():
    from benchmarks import next_level

    for path in Path(next_level.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "mock" not in text and "monkeypatch" not in text, path.name
    for label, params in next_level.IDEAS:
        assert all(name in SETTINGS or is_routed(name) for name in params), label
        DeepInfomaxTransformer(**params)._validate_params()


def rows(next_level):
    return dict(next_level.IDEAS)


def test_the_encoder_ideas_train_the_networks_they_name(digit_images, fast):
    """The residual block and the wider local map are in the networks trained with their
    encoder (and only there), and the critics read the wider map."""
    from benchmarks import next_level

    X = digit_images[0][:64]
    residual = DeepInfomaxTransformer(**fast, **rows(next_level)["residual block"]).fit(X)
    wider = DeepInfomaxTransformer(**fast, **rows(next_level)["local map of 4w channels"]).fit(X)
    plain = DeepInfomaxTransformer(**fast).fit(X)
    assert isinstance(residual.module_.encoder.to_local[-1], next_level.BasicBlock)
    assert not any(isinstance(m, next_level.BasicBlock) for m in plain.module_.modules())
    channels = next_level.LOCAL_CHANNELS * fast["width"]
    assert wider.module_.encoder.local_shape[0] == channels
    critic_convs = [m for m in wider.module_.local_critic.modules() if isinstance(m, nn.Conv2d)]
    assert critic_convs[0].in_channels == channels
    assert plain.module_.encoder.local_shape[0] == 2 * fast["width"]
    for dim in (residual, wider):
        codes = dim.transform(X)
        assert codes.shape == (64, fast["latent_dim"]) and np.isfinite(codes).all()
        assert not np.array_equal(codes, plain.transform(X))
    best = rows(next_level)["residual block, local_scales=2, critic_width=256"]
    both = DeepInfomaxTransformer(**fast, **best).fit(X)  # the block's conv map: 2 scales
    assert isinstance(both.module_.encoder.to_local[-1], next_level.BasicBlock)
    assert both.module_.conv_local_critic is not None


class SeenOptimizer(Callback):
    def on_train_begin(self, net, **kwargs):
        self.seen = (type(net.optimizer_), net.optimizer_.param_groups[0]["weight_decay"])


def test_the_weight_decay_row_trains_with_adamw_and_its_decay(digit_images, fast):
    from benchmarks import next_level

    seen = SeenOptimizer()
    params = rows(next_level)["weight decay 1e-4"]
    DeepInfomaxTransformer(**fast, **params, callbacks=[seen]).fit(digit_images[0][:32])
    assert seen.seen == (torch.optim.AdamW, 1e-4)


def test_the_ema_row_leaves_the_average_of_the_weights_in_the_fitted_model(digit_images, fast):
    from benchmarks import next_level

    X = digit_images[0][:64]
    (average,) = rows(next_level)["EMA of weights (0.998)"]["callbacks"]
    dim = DeepInfomaxTransformer(**fast, callbacks=[average]).fit(X)
    averaged = average.average_.module.encoder.state_dict()
    for name, value in dim.module_.encoder.state_dict().items():
        assert torch.equal(value, averaged[name]), name
    plain = DeepInfomaxTransformer(**fast).fit(X)
    assert not np.array_equal(dim.transform(X), plain.transform(X))
    # with decay 0 the average is the last step's weights: the plain model, bit for bit
    last = DeepInfomaxTransformer(**fast, callbacks=[next_level.WeightAverage(0.0)]).fit(X)
    assert np.array_equal(last.transform(X), plain.transform(X))


def test_the_resized_crop_rows_draw_resized_crops_in_place_of_shifts(digit_images, fast):
    from benchmarks import next_level
    from dimlearn.views import image_view

    images = torch.rand(6, 3, 16, 16)
    resized = rows(next_level)["resized crops"]["augmentation"]
    stronger = rows(next_level)["resized crops, jitter 0.6"]["augmentation"]
    views = [
        view(images, torch.Generator().manual_seed(0), None, True)
        for view in (resized, stronger, image_view)
    ]
    assert all(v.shape == images.shape for v in views)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])
    X = digit_images[0][:48]
    dim = DeepInfomaxTransformer(**fast, augmentation=resized).fit(X)
    assert not np.array_equal(dim.transform(X), DeepInfomaxTransformer(**fast).fit(X).transform(X))
