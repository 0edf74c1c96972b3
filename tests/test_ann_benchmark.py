"""The ANN benchmark runs end to end on tiny synthetic codes (measured elsewhere, not here).

The exact rows (numpy, scikit-learn) always run; each approximate index runs only where its
library is installed (they are optional: ``pip install pynndescent hnswlib faiss-cpu``).
"""

import json

import numpy as np
import pytest

from benchmarks import ann

TINY = ["--codes", "clusters", "--n", "3000", "--n-queries", "50", "--n-sklearn", "20"]


def run(tmp_path, *libraries):
    args = [*TINY, "--repeats", "1", "--out", str(tmp_path), "--libraries", *libraries]
    assert ann.main(args) == 0
    payload = json.loads((tmp_path / "ann.json").read_text())
    table = (tmp_path / "ann.md").read_text()
    assert "| library | setting | build s |" in table and "recall@10" in table
    assert "cores" in table and "Goal: recall@10 >= 0.95" in table
    return payload, table


def check_rows(rows):
    for row in rows:
        assert 0.0 <= row["recall"] <= 1.0, row
        assert row["qps"] > 0 and row["build_s"] >= 0, row
        assert row["n"] == 3000 and row["speedup_sklearn"] > 0, row
    numpy_row, sklearn_row = rows[:2]
    assert numpy_row["library"] == "numpy exact" and numpy_row["recall"] == 1.0
    assert numpy_row["n_queries"] == 50 and numpy_row["speedup_numpy"] == 1.0
    assert sklearn_row["library"] == "scikit-learn brute" and sklearn_row["n_queries"] == 20
    assert sklearn_row["recall"] >= 0.99  # exact up to float32 ties
    assert sklearn_row["speedup_sklearn"] == 1.0


@pytest.mark.slow
def test_exact_rows_only(tmp_path):
    payload, table = run(tmp_path)  # --libraries with nothing: the exact baselines only
    check_rows(payload["rows"])
    assert len(payload["rows"]) == 2 and payload["recommended"] is None
    assert "| numpy exact |" in table and "| scikit-learn brute |" in table
    assert payload["data"]["noise_sigma_per_dim"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "library, module, settings",
    [
        ("hnswlib", "hnswlib", 4),
        ("faiss", "faiss", 7),  # faiss-hnsw (4 efSearch) and faiss-ivf (3 nprobe)
        ("pynndescent", "pynndescent", 3),  # ~30-120 s: numba compiles its functions
    ],
)
def test_index_rows(tmp_path, library, module, settings):
    pytest.importorskip(module)
    payload, table = run(tmp_path, library)
    rows = payload["rows"]
    check_rows(rows)
    assert len(rows) == 2 + settings
    for row in rows[2:]:
        assert row["kind"] == "ann" and row["library"].startswith(library)
        assert row["recall"] >= 0.5, row  # tiny data: any index finds most neighbours
        assert row["index_mib"] is not None and row["warmup_build_s"] >= 0
        assert f"| {row['library']} | {row['setting']} |" in table
    assert payload["recommendation"] and not payload["notes"]


def test_missing_library_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "installed", lambda module: False)
    payload, table = run(tmp_path, "hnswlib", "faiss")
    assert [r["library"] for r in payload["rows"]] == ["numpy exact", "scikit-learn brute"]
    assert any("hnswlib skipped" in note for note in payload["notes"])
    assert "faiss-ivf skipped" in table and "pip install faiss-cpu" in table


def test_exact_search_and_recall():
    rng = np.random.default_rng(0)
    codes = ann.normalise(rng.normal(size=(500, 8)).astype(np.float32))
    queries = ann.normalise(rng.normal(size=(30, 8)).astype(np.float32))
    truth = ann.exact_neighbours(codes, queries, k=5, chunk=7)
    expected = np.argsort(-(queries @ codes.T), axis=1)[:, :5]
    np.testing.assert_array_equal(truth, expected)
    assert ann.recall_at_k(truth, truth) == 1.0
    assert ann.recall_at_k(np.full_like(truth, -1), truth) == 0.0
    half = truth.copy()
    half[:, :2] = -1
    assert ann.recall_at_k(half[:, ::-1], truth) == pytest.approx(3 / 5)


def test_noisy_copies_keep_norms_roughly_and_shapes():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(100, 64)).astype(np.float32) * 5
    rows = np.resize(np.arange(100), 250)
    copies = ann.noisy_copies(base, rows, sigma=0.01, rng=rng, chunk=64)
    assert copies.shape == (250, 64) and copies.dtype == np.float32
    cos = np.sum(ann.normalise(copies) * ann.normalise(base[rows]), axis=1)
    assert cos.min() > 0.99  # sigma * sqrt(64) = 0.08: a small perturbation


def test_a_fast_exact_search_is_never_the_recommendation():
    """On a fast core the chunked numpy search can pass 10x scikit-learn's brute force; it
    is a baseline, not an index (no build time, no index size), so it is never picked."""
    from benchmarks.ann import recommendation

    exact = {"library": "numpy exact", "kind": "exact", "setting": "chunks", "recall": 1.0}
    verdict, pick = recommendation([dict(exact, speedup_sklearn=12.0, build_s=None)])
    assert pick is None and "No approximate index" in verdict
