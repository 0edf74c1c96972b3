"""The masked-feature reconstruction term of table rows (``reconstruction``, issue 23)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dimlearn
from dimlearn import DeepInfomaxTransformer
from dimlearn.objectives import reconstruction_errors
from dimlearn.views import corrupt_rows


def _low_rank_rows(n=256, features=8, rank=2, seed=0):
    """Rows on a plane of ``rank`` dimensions in ``features``: a code of ``rank`` numbers
    can give back every feature, and a corrupted feature can be told from the others."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, features))).astype(np.float32)


def test_the_error_is_the_mean_square_of_each_row():
    predicted = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    rows = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert reconstruction_errors(predicted, rows).tolist() == [2.5, 0.0]
    halves = reconstruction_errors(predicted.bfloat16(), rows.bfloat16())
    assert halves.dtype == torch.float32


def test_the_term_is_recorded_and_learns_the_rows(fast):
    """Reconstruction alone (a denoising autoencoder) on rows of rank 2: the decoder gives
    back the uncorrupted rows from the codes of corrupted ones far better than at the start
    (a constant guess, the feature means, scores 1 on standardised rows)."""
    X = _low_rank_rows()
    dim = DeepInfomaxTransformer(
        **dict(fast, max_epochs=30, latent_dim=2),
        batch_size=32,
        alpha=0.0,
        beta=0.0,
        gamma=0.0,
        reconstruction=1.0,
    ).fit(X)
    errors = dim.history_[:, "train_reconstruction"]
    assert errors[0] > 0.5
    assert errors[-1] < 0.5 * errors[0]
    assert set(dim.history_[-1]) >= {"train_reconstruction", "train_loss"}
    assert "train_local" not in dim.history_[-1]
    assert dim.history_[-1, "train_loss"] == pytest.approx(errors[-1], rel=1e-6)


def test_the_decoder_trains_beside_local_mi_and_is_kept_for_continued_fits(fast, tmp_path):
    X = _low_rank_rows()
    dim = DeepInfomaxTransformer(**fast, reconstruction=0.5).fit(X)
    assert {"train_local", "train_prior", "train_reconstruction"} <= set(dim.history_[-1])
    assert dim.module_.decoder is not None
    assert dim.module_.decoder.net[-1].out_features == X.shape[1]
    # transform reads the encoder only: the same codes with the decoder's weights scrambled
    codes = dim.transform(X)
    with torch.no_grad():
        for weight in dim.module_.decoder.parameters():
            weight.mul_(-3.0)
    assert np.array_equal(dim.transform(X), codes)

    with_state = dimlearn.load(
        dimlearn.save(dim, tmp_path / "all.safetensors", include_training_state=True)
    )
    without = dimlearn.load(dimlearn.save(dim, tmp_path / "codes.safetensors"))
    assert with_state.reconstruction == 0.5
    assert with_state.module_.decoder is not None
    assert getattr(without.module_, "decoder", None) is None  # a model for transform only
    assert np.array_equal(with_state.transform(X), codes)
    assert np.array_equal(without.transform(X), codes)
    with pytest.warns(UserWarning, match="no trained decoder"):
        without.set_params(warm_start=True, max_epochs=1).fit(X)
    continued = with_state.set_params(warm_start=True, max_epochs=1).fit(X)
    assert continued.n_iter_ == fast["max_epochs"] + 1


def test_the_same_seed_gives_the_same_numbers(fast):
    X = _low_rank_rows()
    runs = [DeepInfomaxTransformer(**fast, reconstruction=1.0).fit(X) for _ in range(2)]
    assert np.array_equal(runs[0].transform(X), runs[1].transform(X))
    assert list(runs[0].history_[:, "train_reconstruction"]) == list(
        runs[1].history_[:, "train_reconstruction"]
    )
    # and the term changes the training (it is not ignored)
    plain = DeepInfomaxTransformer(**fast).fit(X)
    assert not np.array_equal(plain.transform(X), runs[0].transform(X))


def test_the_term_corrupts_rows_as_scarf_does():
    """What the decoder sees coded: each value of a row stays or comes from its own column."""
    rows = torch.arange(40.0).reshape(8, 5)
    view = corrupt_rows(rows, torch.Generator().manual_seed(1))
    assert bool(((view == rows) | (view % 5 == rows % 5)).all())
    assert not torch.equal(view, rows)


@pytest.mark.parametrize(
    ("params", "shape", "message"),
    [
        (dict(reconstruction=1.0), (32, 8, 8), "read as images"),
        (dict(reconstruction=1.0, views=2), (32, 6), "views=1"),
        (dict(alpha=0.0, beta=0.0, reconstruction=0.0), (32, 6), "nothing rewards"),
    ],
)
def test_combinations_that_cannot_train_are_refused_before_training(
    params, shape, message, fast, monkeypatch
):
    import dimlearn.training as training_module

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the combination was refused")

    monkeypatch.setattr(training_module, "train_net", no_training)
    X = np.random.default_rng(0).random(shape).astype(np.float32)
    with pytest.raises(ValueError, match=message):
        DeepInfomaxTransformer(**fast, **params).fit(X)


def test_negative_weights_are_refused(fast):
    with pytest.raises(ValueError, match="reconstruction"):
        DeepInfomaxTransformer(**fast, reconstruction=-1.0).fit(_low_rank_rows())


def test_files_and_pickles_without_the_parameter_read_as_without_the_term(fast, tmp_path):
    """Models of 0.3.0 had no reconstruction term: their pickles read reconstruction=0."""
    X = _low_rank_rows()
    state = DeepInfomaxTransformer(**fast).fit(X).__getstate__()
    del state["reconstruction"]
    del state["_dimlearn_version"]  # pickles of 0.3.0 did not say
    older = DeepInfomaxTransformer.__new__(DeepInfomaxTransformer)
    older.__setstate__(state)
    assert older.reconstruction == 0.0
    assert "train_reconstruction" not in older.set_params(warm_start=True).fit(X).history_[-1]
