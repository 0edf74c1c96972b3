"""The peers benchmark (``python -m benchmarks.peers``) runs end to end on tiny data; the
rows that need lightly run where the bench environment exists (make_bench_env.sh)."""

import importlib.util
import json

import numpy as np
import pytest

from benchmarks import peers, peers_kmeans
from benchmarks.peers_figure import draw


def tiny_cifar(name, n_train, n_test, seed):
    """Random 32x32 colour images in place of CIFAR-10 (the ResNet needs 32x32)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n_train + n_test) % 10
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:], []


def run_peers(tmp_path, monkeypatch, *args):
    monkeypatch.setattr(peers, "load_dataset", tiny_cifar)
    argv = ["--budget-minutes", "0.005", "--n-train", "48", "--n-test", "24"]
    argv += ["--out", str(tmp_path), "--name", "tiny", *args]
    assert peers.main(argv) == 0
    return json.loads((tmp_path / "tiny.json").read_text())


def bench_env_reason():
    if importlib.util.find_spec("lightly") or peers.BENCH_PYTHON.exists():
        return None
    return f"no bench environment ({peers.BENCH_PYTHON}): bash benchmarks/make_bench_env.sh"


def test_only_takes_groups_and_methods():
    assert peers.chosen_groups(None) == peers.GROUPS
    assert peers.chosen_groups(["moco", "pca"]) == ["pca", "moco-conv", "moco-resnet18"]
    assert peers.chosen_groups(["byol-conv"]) == ["byol-conv"]
    with pytest.raises(SystemExit, match="unknown rows"):
        peers.chosen_groups(["swav"])


def test_coates_ng_parts():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(108, 108))
    patches = peers_kmeans.normalise((rng.normal(size=(5000, 108)) @ mixing).astype(np.float32))
    np.testing.assert_allclose(patches.mean(axis=1), 0, atol=1e-4)
    white = peers_kmeans.Whitening().fit(patches, seed=0).transform(patches)
    variances = np.linalg.eigvalsh(np.cov(white, rowvar=False))
    assert variances.max() < 1.01 and np.median(variances) > 0.5  # lambda / (lambda + 0.1)

    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    prepared = peers_kmeans.fit_patches(images, 500, seed=0)
    assert prepared["patches"].shape == (500, 108)
    (F,), seconds, facts = peers_kmeans.kmeans_features(prepared, 5, [images], seed=0)
    assert F.shape == (3, 20) and (F >= 0).all() and F.sum() > 0
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"))
    assert facts["kmeans_passes"] >= 1


def test_comparison_names_every_row_ahead_of_dimlearn():
    def row(features, group, level, dims, linear, knn):
        return dict(
            features=features, group=group, level=level, dims=dims, linear=linear, knn10_cos=knn
        )

    rows = [
        row("dimlearn defaults: code", "dimlearn", "code", 64, 0.50, 0.40),
        row("dimlearn defaults: conv", "dimlearn", "conv", 4096, 0.60, 0.50),
        row("PCA-64", "pca", "code", 64, 0.30, 0.45),
        row("k-means, 1,600 centroids", "kmeans", "features", 6400, 0.70, 0.40),
        row("SimCLR (ResNet-18): backbone", "simclr-resnet18", "backbone", 512, 0.9, 0.9),
    ]
    wins = peers.compare_with_dimlearn(rows)
    assert rows[2]["vs_dimlearn"] == "+20.0 / -5.0 **row ahead on kNN-10**"
    assert rows[3]["vs_dimlearn"].startswith("-10.0 / +10.0 (vs dimlearn defaults: conv, 4096-d)")
    assert "vs_dimlearn" not in rows[4]  # no dimlearn row of its size
    assert len(wins) == 2 and wins[0].startswith("- PCA-64 (64-d) is ahead of dimlearn")


@pytest.mark.slow
def test_rows_without_lightly(tmp_path, monkeypatch):
    payload = run_peers(
        tmp_path,
        monkeypatch,
        "--only",
        "pca",
        "kmeans",
        "dimlearn",
        "--kmeans-centroids",
        "8",
        "4",
        "--kmeans-patches",
        "2000",
    )
    rows = {row["features"]: row for row in payload["rows"]}
    assert list(rows) == [
        "PCA-48",  # 48 images: PCA keeps at most 48 components
        "k-means (Coates & Ng), 8 centroids",
        "k-means (Coates & Ng), 8 centroids, PCA-32",
        "k-means (Coates & Ng), 4 centroids",
        "dimlearn defaults: code",
        "dimlearn defaults: fc",
        "dimlearn defaults: conv",
    ]
    assert [rows[f"dimlearn defaults: {level}"]["dims"] for level in ("code", "fc", "conv")] == [
        64,
        1024,
        4096,
    ]
    assert rows["k-means (Coates & Ng), 4 centroids"]["dims"] == 16
    for row in rows.values():
        assert 0 <= row["linear"] <= 1 and 0 <= row["knn10_cos"] <= 1 and row["seconds"] > 0
    kmeans = rows["k-means (Coates & Ng), 8 centroids"]["stages_s"]
    assert set(kmeans) == {"patches", "whitening", "kmeans", "encoding", "total"}
    assert payload["n_train"] == 48 and payload["threads"] == 2 and not payload["skipped"]
    table = (tmp_path / "tiny.md").read_text()
    assert "| dimlearn defaults: conv | 4096 |" in table and "Command: `python -m" in table


@pytest.mark.slow
def test_a_run_of_some_groups_keeps_the_other_rows_of_the_same_protocol(tmp_path, monkeypatch):
    kmeans = ["--kmeans-centroids", "4", "--kmeans-patches", "500"]
    run_peers(tmp_path, monkeypatch, "--only", "kmeans", *kmeans)
    payload = run_peers(tmp_path, monkeypatch, "--only", "pca")
    groups = [row["group"] for row in payload["rows"]]
    assert groups == ["pca", "kmeans", "kmeans"]  # in the table's order
    assert [c["groups"] for c in payload["commands"]] == [["kmeans"], ["pca"]]
    payload = run_peers(tmp_path, monkeypatch, "--only", "kmeans", *kmeans, "--seed", "1")
    assert [row["group"] for row in payload["rows"]] == ["kmeans", "kmeans"]  # another protocol
    assert "Command: `python -m benchmarks.peers" in (tmp_path / "tiny.md").read_text()


def fake_bench_process(monkeypatch):
    """The bench environment's process replaced by one that writes random 64-d codes and
    the info it would, so the rows' bookkeeping runs without lightly."""
    versions = dict(lightly="x", torchvision="x", torchvision_compiled_ops=False)
    versions.update(torch="x", python="x")
    monkeypatch.setattr(peers, "bench_python", lambda args: ("bench-python", versions))

    def run(command, cwd):
        flag = {name: command[i + 1] for i, name in enumerate(command) if name.startswith("--")}
        out = peers.Path(flag["--out"])
        out.mkdir()
        n = {
            name: len(np.load(peers.Path(flag["--data"]) / f"{name}.npy"))
            for name in ("probe", "test")
        }
        rng = np.random.default_rng(0)
        for name in ("probe", "test"):
            np.save(out / f"code_{name}.npy", rng.normal(size=(n[name], 64)).astype(np.float32))
        info = dict(train_s=1.0, epochs=1.0, steps=3, feature_s=0.1, lightly_parts=["p"])
        info.update(batch_size=16, optimiser="o", precision=flag["--precision"])
        (out / "info.json").write_text(json.dumps({**info, "loader_workers": 0}))
        return peers.subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(peers.subprocess, "run", run)


def test_bfloat16_peer_rows_go_beside_the_float32_rows_not_over_them(tmp_path, monkeypatch):
    fake_bench_process(monkeypatch)
    run_peers(tmp_path, monkeypatch, "--only", "simclr-conv", "pca")
    payload = run_peers(
        tmp_path, monkeypatch, "--only", "simclr-conv", "--peer-precision", "bfloat16"
    )
    rows = {row["features"]: row["group"] for row in payload["rows"]}
    assert rows == {
        "PCA-48": "pca",
        "SimCLR (dimlearn ConvEncoder): code": "simclr-conv",
        "SimCLR (dimlearn ConvEncoder, bfloat16): code": "simclr-conv-bf16",
    }
    precisions = {g: info["precision"] for g, info in payload["lightly"]["rows"].items()}
    assert precisions == {"simclr-conv": "float32", "simclr-conv-bf16": "bfloat16"}
    assert [c["groups"] for c in payload["commands"]] == [
        ["pca", "simclr-conv"],
        ["simclr-conv-bf16"],
    ]
    again = run_peers(
        tmp_path, monkeypatch, "--only", "simclr-conv", "--peer-precision", "bfloat16"
    )
    assert [row["group"] for row in again["rows"]] == ["pca", "simclr-conv", "simclr-conv-bf16"]
    assert len(again["commands"]) == 2  # the rerun replaced its own rows and command only


@pytest.mark.slow
def test_lightly_rows_are_skipped_with_a_reason_without_the_bench_env(tmp_path, monkeypatch):
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    missing = tmp_path / "no-venv" / "python"
    payload = run_peers(
        tmp_path, monkeypatch, "--only", "pca", "byol-conv", "--bench-python", str(missing)
    )
    assert [row["features"] for row in payload["rows"]] == ["PCA-48"]
    assert "make_bench_env.sh" in payload["skipped"]["byol-conv"]
    assert "Skipped byol-conv" in (tmp_path / "tiny.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(bench_env_reason() is not None, reason=str(bench_env_reason()))
def test_lightly_rows_in_the_bench_env(tmp_path, monkeypatch):
    args = ["--only", "simclr-conv", "byol-resnet18", "moco-resnet18", "--batch-size", "16"]
    payload = run_peers(tmp_path, monkeypatch, *args)
    dims = {row["features"]: row["dims"] for row in payload["rows"]}
    assert dims == {
        "SimCLR (dimlearn ConvEncoder): code": 64,
        "SimCLR (dimlearn ConvEncoder): backbone": 1024,
        "SimCLR (dimlearn ConvEncoder): conv": 4096,
        "BYOL (ResNet-18 (CIFAR)): code": 64,
        "BYOL (ResNet-18 (CIFAR)): backbone": 512,
        "MoCo v2 (ResNet-18 (CIFAR)): code": 64,
        "MoCo v2 (ResNet-18 (CIFAR)): backbone": 512,
    }
    assert all(row["steps"] >= 1 and row["seconds"] > 0 for row in payload["rows"])
    lightly = payload["lightly"]
    assert lightly["versions"]["lightly"] and lightly["versions"]["torch"]
    moco = lightly["rows"]["moco-resnet18"]
    assert "models.ResNetGenerator('resnet-18', num_splits=8)" in moco["lightly_parts"]
    assert moco["batch_size"] == 16 and np.isfinite(moco["final_loss"])
    assert "lightly rows: lightly" in (tmp_path / "tiny.md").read_text()


def test_figure_draws_every_row_over_the_budgets(tmp_path):
    def run(budget, offset):
        rows = [
            dict(features="PCA-64", group="pca", level="code", dims=64, minutes=0.1),
            dict(
                features="dimlearn defaults: code",
                group="dimlearn",
                level="code",
                dims=64,
                minutes=budget,
            ),
            dict(
                features="SimCLR (ResNet-18 (CIFAR)): backbone",
                group="simclr-resnet18",
                level="backbone",
                dims=512,
                minutes=budget,
            ),
        ]
        for i, row in enumerate(rows):
            row.update(linear=0.3 + 0.1 * i + offset, knn10_cos=0.3 + offset)
        n_train = 10_000 if budget <= 5 else 50_000
        return {
            "study": "peers",
            "budget_minutes": budget,
            "n_train": n_train,
            "threads": 2,
            "rows": rows,
        }

    for budget, offset in ((5, 0.0), (15, 0.05)):
        (tmp_path / f"peers_{budget}min.json").write_text(json.dumps(run(budget, offset)))
    (tmp_path / "peers_other.json").write_text(json.dumps({"study": "other"}))
    assert draw(tmp_path).stat().st_size > 10_000
