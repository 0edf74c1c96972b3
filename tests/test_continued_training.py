"""Continued training: ``warm_start`` and ``partial_fit`` go on from the fitted networks,
Adam's moments and input statistics; a changed architecture or sample shape is refused."""

import joblib
import numpy as np
import pytest

from dimlearn import DeepInfomaxTransformer


def test_warm_start_continues_training(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, warm_start=True).fit(X[:64])
    mean_before = dim.input_mean_.copy()
    first_curve = list(dim.loss_curve_)
    dim.fit(X[64:128])
    assert dim.n_iter_ == 4 and len(dim.history_) == 4
    assert dim.loss_curve_[:2] == first_curve
    assert list(dim.history_[:, "epoch"]) == [1, 2, 3, 4]
    np.testing.assert_array_equal(dim.input_mean_, mean_before)  # first fit's scaling kept
    steps = [s["step"] for s in dim._optimizer_state.values()]
    assert all(int(step) == 4 for step in steps)  # Adam went on counting: 2 + 2 batches


@pytest.mark.slow
def test_warm_start_matches_one_longer_fit_in_quality(digit_images, fast):
    X, _ = digit_images
    longer = DeepInfomaxTransformer(**dict(fast, max_epochs=6, width=8)).fit(X[:600])
    pieces = DeepInfomaxTransformer(**dict(fast, max_epochs=3, width=8), warm_start=True)
    pieces.fit(X[:600]).fit(X[:600])
    held_out = X[600:900]
    assert pieces.score(held_out) == pytest.approx(longer.score(held_out), abs=0.5)
    assert pieces.score(held_out) > DeepInfomaxTransformer(**dict(fast, max_epochs=3, width=8)).fit(
        X[:600]
    ).score(held_out)


def test_without_warm_start_fit_starts_afresh(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast).fit(X[:64])
    first = dim.transform(X[:10])
    dim.fit(X[:64])
    assert dim.n_iter_ == 2
    np.testing.assert_array_equal(dim.transform(X[:10]), first)


def test_warm_start_refuses_changed_architecture(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, warm_start=True).fit(X[:64])
    dim.set_params(latent_dim=4)
    with pytest.raises(ValueError, match="build different ones"):
        dim.fit(X[:64])


def test_warm_start_refuses_other_sample_shapes(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, warm_start=True).fit(X[:64])
    with pytest.raises(ValueError, match=r"fitted on samples of shape \(8, 8\)"):
        dim.fit(np.zeros((20, 9, 9)))


def test_partial_fit_runs_one_epoch_per_call_reproducibly(digit_images, fast):
    X, _ = digit_images

    def run():
        dim = DeepInfomaxTransformer(**fast)
        for chunk in (X[:64], X[64:128], X[128:192]):
            dim.partial_fit(chunk)
        return dim

    a, b = run(), run()
    assert a.n_iter_ == 3 and len(a.loss_curve_) == 3
    np.testing.assert_array_equal(a.transform(X[:20]), b.transform(X[:20]))


def test_partial_fit_trains_on_every_row_even_with_early_stopping(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, early_stopping=True, batch_size=16)
    dim.partial_fit(X[:64])
    assert dim.history_[-1, "train_batch_count"] == 4  # 64 rows, none held out
    assert "valid_loss" not in dim.history_[-1]


def test_partial_fit_after_loading_from_disk(digit_images, tmp_path, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast).partial_fit(X[:64])
    joblib.dump(dim, tmp_path / "dim.joblib")
    loaded = joblib.load(tmp_path / "dim.joblib")
    loaded.partial_fit(X[64:128])
    dim.partial_fit(X[64:128])
    assert loaded.n_iter_ == 2
    np.testing.assert_array_equal(loaded.transform(X[:10]), dim.transform(X[:10]))
