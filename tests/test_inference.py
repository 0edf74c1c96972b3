"""Inference with a fitted model: the held-out MI bound of ``score`` (transform is tested
with the estimator)."""

import math

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from dimlearn import DeepInfomaxTransformer
from dimlearn.estimator import SCORE_BATCH


@pytest.fixture(scope="module")
def trained_and_global_only(digit_images):
    X, _ = digit_images
    # one view: score reads a code against its own image's map, what one view trains;
    # float32: the score bounds below were measured in float32 ("auto" is bfloat16 on some CPUs)
    common = dict(max_epochs=5, width=8, latent_dim=16, random_state=0, views=1)
    common["precision"] = "float32"
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


def test_concat_critic_scores_in_chunks_as_one_batch(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, critic="concat").fit(X[:64])
    from dimlearn.inference import local_mi_score
    from dimlearn.inputs import ArrayBatches

    data = ArrayBatches(X[64:164].reshape(-1, 8, 8), dim.layout_, dim.input_mean_, dim.input_scale_)
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
