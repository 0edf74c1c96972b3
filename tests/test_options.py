"""The options beyond the Keras reference: prior forms, local-local MI, learning-rate
schedule, early stopping, warm start / partial_fit and the label-free ``score``."""

import math

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from dimlearn import DeepInfomaxTransformer
from dimlearn.estimator import SCORE_BATCH
from dimlearn.infomax import DeepInfomaxModule
from dimlearn.networks import (
    ConvEncoder,
    LocalLocalCritic,
    MLPEncoder,
    PriorDiscriminator,
)
from dimlearn.objectives import adversarial_prior_losses, prior_kl

FAST = dict(max_epochs=2, width=4, latent_dim=8, random_state=0)


def small_rows():
    return np.random.default_rng(0).random((20, 5))


# -- prior forms ------------------------------------------------------------------------


def test_kl_mean_is_the_sum_over_code_dimensions_divided_by_their_number():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    assert torch.allclose(prior_kl(mu, logvar, "mean") * 7, prior_kl(mu, logvar, "sum"))


def test_adversarial_losses_on_a_confident_discriminator():
    sure = torch.full((4,), 20.0)
    d_loss, g_loss = adversarial_prior_losses(sure, -sure, -sure)
    assert d_loss.item() < 1e-6  # tells prior from codes
    assert g_loss.item() == pytest.approx(20.0, abs=1e-6)  # the encoder is caught


def test_frozen_discriminator_passes_gradient_to_codes_only():
    disc = PriorDiscriminator(latent_dim=3, hidden=5)
    z = torch.randn(4, 3, requires_grad=True)
    disc.frozen(z).sum().backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())


def test_adversarial_prior_trains_discriminator_on_detached_codes():
    torch.manual_seed(0)
    module = DeepInfomaxModule(
        MLPEncoder(6, 3, 2), 3, critic_hidden=8, prior="adversarial", critic="dot"
    )
    x = torch.randn(10, 6)
    module.terms(x, ("prior",))["prior"].backward()
    encoder_grad = sum(p.grad.abs().sum() for p in module.encoder.to_code.parameters())
    disc_grad = sum(p.grad.abs().sum() for p in module.prior_discriminator.parameters())
    assert encoder_grad > 0 and disc_grad > 0


@pytest.mark.parametrize("prior", ["kl", "kl_mean", "adversarial"])
def test_each_prior_form_trains(digit_images, prior):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, gamma=0.5, prior=prior).fit(X[:64])
    prior_curve = dim.history_[:, "train_prior"]
    assert np.isfinite(prior_curve).all() and len(prior_curve) == 2
    assert dim.transform(X[:3]).shape == (3, 8)


def test_optional_parts_leave_the_other_initial_weights_unchanged():
    def build(**kwargs):
        torch.manual_seed(0)
        encoder = ConvEncoder(1, 8, 8, latent_dim=4, width=4)
        return DeepInfomaxModule(encoder, 4, critic_hidden=8, **kwargs).state_dict()

    plain = build()
    for extra in (build(prior="adversarial"), build(local_local=True)):
        assert set(plain) < set(extra)
        assert all(torch.equal(plain[key], extra[key]) for key in plain)


# -- local-local MI ---------------------------------------------------------------------


def test_local_local_positive_context_leaves_out_the_scored_position():
    torch.manual_seed(0)
    critic = LocalLocalCritic((3, 2, 2), hidden=4)
    local_map = torch.randn(5, 3, 2, 2)
    pos, neg = critic.scores(local_map, "all")
    assert pos.shape == (5, 2, 2) and neg.shape == (5, 4, 2, 2)
    positions = critic.position_side(local_map)
    context = critic.context_side(local_map)
    others = (context[1].sum(dim=(1, 2)) - context[1, :, 0, 1]) / 3
    assert torch.allclose(pos[1, 0, 1], positions[1, :, 0, 1] @ others, atol=1e-6)
    # image 1's first negative is image 0's whole-map mean context
    assert torch.allclose(
        neg[1, 0, 0, 1], positions[1, :, 0, 1] @ context[0].mean(dim=(1, 2)), atol=1e-6
    )


def test_local_local_needs_two_positions():
    with pytest.raises(ValueError, match="at least 2 positions"):
        LocalLocalCritic((3, 1, 1), hidden=4)


@pytest.mark.parametrize("negatives", ["all", "shuffle"])
def test_local_local_term_trains_with_its_own_weight(digit_images, negatives):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, delta=0.5, negatives=negatives).fit(X[:64])
    assert np.isfinite(dim.history_[:, "train_local_local"]).all()
    assert hasattr(dim.module_, "local_local_critic")


def test_local_local_on_tabular_rows_is_refused(monkeypatch):
    import dimlearn.estimator as estimator_module

    monkeypatch.setattr(estimator_module, "train_networks", lambda *a, **k: 1 / 0)
    with pytest.raises(ValueError, match="delta > 0"):
        DeepInfomaxTransformer(**FAST, delta=1.0).fit(small_rows())


# -- learning-rate schedule and early stopping -------------------------------------------


def test_cosine_schedule_anneals_the_learning_rate(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(FAST, max_epochs=4), lr_schedule="cosine").fit(X[:64])
    lrs = list(dim.history_[:, "event_lr"])
    assert lrs[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_early_stopping_restores_the_whole_state_of_the_best_epoch(digit_images):
    X, _ = digit_images
    common = dict(FAST, early_stopping=True, validation_fraction=0.25)
    # nothing can beat the first epoch by 1e9, so training stops after 1 + 2 epochs and
    # the model is the state after epoch 1: weights, Adam's moments, history and n_iter_
    stopped = DeepInfomaxTransformer(
        **dict(common, max_epochs=10), tol=1e9, n_iter_no_change=2
    ).fit(X[:80])
    assert stopped.n_iter_ == 1 and len(stopped.history_) == 1 == len(stopped.loss_curve_)
    assert stopped.history_[-1, "epochs_after_best"] == 2
    assert np.isfinite(stopped.history_[-1, "valid_loss_after_best"]).all()
    one_epoch = DeepInfomaxTransformer(**dict(common, max_epochs=1)).fit(X[:80])
    np.testing.assert_array_equal(stopped.transform(X[100:120]), one_epoch.transform(X[100:120]))
    assert stopped._optimizer_state.keys() == one_epoch._optimizer_state.keys()
    for name, state in stopped._optimizer_state.items():
        for key, value in state.items():
            torch.testing.assert_close(value, one_epoch._optimizer_state[name][key], rtol=0, atol=0)


def test_early_stopping_holds_out_rows_it_does_not_train_on(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, early_stopping=True, validation_fraction=0.25)
    dim.fit(X[:80])
    assert dim.history_[-1, "train_batch_count"] == 1  # 60 training rows, batch_size 128
    assert dim.history_[-1, "valid_batch_count"] == 1


def test_early_stopping_with_too_few_rows_is_refused(monkeypatch):
    import dimlearn.estimator as estimator_module

    monkeypatch.setattr(estimator_module, "train_networks", lambda *a, **k: 1 / 0)
    with pytest.raises(ValueError, match="validation_fraction=0.1 splits 10 samples"):
        X = np.random.default_rng(0).random((10, 8, 8))
        DeepInfomaxTransformer(**FAST, early_stopping=True).fit(X)


# -- warm start and partial_fit ---------------------------------------------------------


def test_warm_start_continues_training(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, warm_start=True).fit(X[:64])
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
def test_warm_start_matches_one_longer_fit_in_quality(digit_images):
    X, _ = digit_images
    longer = DeepInfomaxTransformer(**dict(FAST, max_epochs=6, width=8)).fit(X[:600])
    pieces = DeepInfomaxTransformer(**dict(FAST, max_epochs=3, width=8), warm_start=True)
    pieces.fit(X[:600]).fit(X[:600])
    held_out = X[600:900]
    assert pieces.score(held_out) == pytest.approx(longer.score(held_out), abs=0.5)
    assert pieces.score(held_out) > DeepInfomaxTransformer(**dict(FAST, max_epochs=3, width=8)).fit(
        X[:600]
    ).score(held_out)


def test_without_warm_start_fit_starts_afresh(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST).fit(X[:64])
    first = dim.transform(X[:10])
    dim.fit(X[:64])
    assert dim.n_iter_ == 2
    np.testing.assert_array_equal(dim.transform(X[:10]), first)


def test_warm_start_refuses_changed_architecture(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, warm_start=True).fit(X[:64])
    dim.set_params(latent_dim=4)
    with pytest.raises(ValueError, match="build different ones"):
        dim.fit(X[:64])


def test_warm_start_refuses_other_sample_shapes(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, warm_start=True).fit(X[:64])
    with pytest.raises(ValueError, match=r"fitted on samples of shape \(8, 8\)"):
        dim.fit(np.zeros((20, 9, 9)))


def test_partial_fit_runs_one_epoch_per_call_reproducibly(digit_images):
    X, _ = digit_images

    def run():
        dim = DeepInfomaxTransformer(**FAST)
        for chunk in (X[:64], X[64:128], X[128:192]):
            dim.partial_fit(chunk)
        return dim

    a, b = run(), run()
    assert a.n_iter_ == 3 and len(a.loss_curve_) == 3
    np.testing.assert_array_equal(a.transform(X[:20]), b.transform(X[:20]))


def test_partial_fit_trains_on_every_row_even_with_early_stopping(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, early_stopping=True, batch_size=16)
    dim.partial_fit(X[:64])
    assert dim.history_[-1, "train_batch_count"] == 4  # 64 rows, none held out
    assert "valid_loss" not in dim.history_[-1]


def test_partial_fit_after_loading_from_disk(digit_images, tmp_path):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST).partial_fit(X[:64])
    joblib.dump(dim, tmp_path / "dim.joblib")
    loaded = joblib.load(tmp_path / "dim.joblib")
    loaded.partial_fit(X[64:128])
    dim.partial_fit(X[64:128])
    assert loaded.n_iter_ == 2
    np.testing.assert_array_equal(loaded.transform(X[:10]), dim.transform(X[:10]))


# -- score --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_and_global_only(digit_images):
    X, _ = digit_images
    common = dict(max_epochs=5, width=8, latent_dim=16, random_state=0)
    trained = DeepInfomaxTransformer(**common).fit(X[:1200])
    global_only = DeepInfomaxTransformer(**common, alpha=1.0, beta=0.0).fit(X[:1200])
    return trained, global_only, X[1300:]


def test_score_is_a_bounded_mi_estimate_that_training_raises(trained_and_global_only):
    trained, global_only, held_out = trained_and_global_only
    score = trained.score(held_out)
    assert 0.7 < score < math.log(SCORE_BATCH)  # 0.99 with the 4x4 local map of 8x8 images
    # beta=0 never trains the local critic: near chance, as documented
    assert abs(global_only.score(held_out)) < 0.5


def test_score_does_not_depend_on_the_loss_weights(trained_and_global_only):
    trained, _, held_out = trained_and_global_only
    score = trained.score(held_out)
    trained.set_params(alpha=2.0, gamma=5.0, mi_estimator="jsd", batch_size=16)
    try:
        assert trained.score(held_out) == score  # deterministic, and of a fixed form
    finally:
        trained.set_params(alpha=0.0, gamma=0.0, mi_estimator="infonce", batch_size=128)


def test_concat_critic_scores_in_chunks_as_one_batch(digit_images):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**FAST, critic="concat").fit(X[:64])
    from dimlearn.inference import local_mi_score
    from dimlearn.inputs import ArrayBatches

    data = ArrayBatches(X[64:164].reshape(-1, 8, 8), dim.layout_, *dim._stats)
    whole = local_mi_score(dim.module_, data, 128, "cpu", code_chunk=1000)
    assert local_mi_score(dim.module_, data, 128, "cpu", code_chunk=7) == pytest.approx(whole)


def test_grid_search_over_loss_weights_without_labels(digit_images):
    X, _ = digit_images
    search = GridSearchCV(
        DeepInfomaxTransformer(max_epochs=3, width=8, latent_dim=16, random_state=0),
        {"alpha": [1.0], "beta": [0.0, 1.0]},
        cv=2,
    )
    search.fit(X[:600])
    assert search.best_params_["beta"] == 1.0
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_score_refuses_a_single_sample_and_other_shapes(trained_and_global_only):
    trained, _, held_out = trained_and_global_only
    with pytest.raises(ValueError, match="at least 2 samples"):
        trained.score(held_out[:1])
    with pytest.raises(ValueError, match="fitted on samples of shape"):
        trained.score(np.zeros((5, 9, 9)))
