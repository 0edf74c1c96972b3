"""The fitted state: listed once, written to and cleared from the estimator, and turned into
plain values and arrays and back (what model files and pickles store)."""

import json

import numpy as np
import pytest
import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn.fitted import ATTRIBUTES, FittedState, clear, rng_from_plain, rng_to_plain
from dimlearn.settings import Settings


@pytest.fixture(scope="module")
def fitted(digit_images, fast):
    X, _ = digit_images
    return DeepInfomaxTransformer(**fast, alpha=0.5).fit(X[:100]), X[:100]


def plain_only(value):
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_only(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str | np.ndarray)


def test_every_fitted_attribute_is_listed_once(fitted):
    dim, _ = fitted
    fitted_names = {name for name in vars(dim) if name.endswith("_") and not name.startswith("__")}
    training_state = {"_optimizer_state", "_optimizer_name"}
    assert fitted_names | training_state == set(ATTRIBUTES.values()) - {"feature_names_in_"}
    assert len(set(ATTRIBUTES.values())) == len(ATTRIBUTES)


def test_the_state_round_trips_through_plain_data(fitted):
    dim, X = fitted
    plain = FittedState.of(dim).to_plain(include_training_state=True)
    assert plain_only(plain)
    json.dumps({k: v for k, v in plain.items() if k not in ("weights", "optimizer")})
    config = Settings.from_params(dim.get_params())
    state = FittedState.from_plain(plain, config)
    other = DeepInfomaxTransformer(**dim.get_params())
    state.write_to(other)
    np.testing.assert_array_equal(other.transform(X), dim.transform(X))
    assert other.random_state_.get_state()[2] == dim.random_state_.get_state()[2]
    assert other._optimizer_state.keys() == dim._optimizer_state.keys()
    assert other.loss_curve_ == dim.loss_curve_ and other.n_iter_ == dim.n_iter_


def test_without_training_state_only_what_transform_and_score_need(fitted):
    dim, _ = fitted
    plain = FittedState.of(dim).to_plain(include_training_state=False)
    assert {key.split(".")[0] for key in plain["weights"]} == {"encoder", "local_critic"}
    assert "optimizer" not in plain and "random_state" not in plain
    state = FittedState.from_plain(plain, Settings.from_params(dim.get_params()))
    assert not state.has_training_state and state.module.global_critic is None


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p["fitted"].update(input_scale_=[-1.0]), "input_scale_"),
        (lambda p: p["fitted"]["layout"].update(channels_last="yes"), "true or false"),
        (lambda p: p["weights"].pop("encoder.to_code.weight"), "to_code.weight is missing"),
        (lambda p: p["weights"].update(bogus=np.zeros(1)), "unknown parts"),
        (lambda p: p["weights"].update({"encoder.to_code.bias": [0.0]}), "not an array"),
    ],
)
def test_plain_data_that_makes_no_sense_is_refused(fitted, edit, match):
    dim, _ = fitted
    plain = FittedState.of(dim).to_plain(include_training_state=False)
    edit(plain)
    with pytest.raises((ValueError, TypeError), match=match):
        FittedState.from_plain(plain, Settings.from_params(dim.get_params()))


def test_clearing_removes_every_fitted_attribute(fitted):
    dim, X = fitted
    copy = DeepInfomaxTransformer(**dim.get_params())
    FittedState.of(dim).write_to(copy)
    copy.transform(X[:3])
    clear(copy)
    assert not [name for name in vars(copy) if name.endswith("_")]
    with pytest.raises(Exception, match="not fitted"):
        copy.transform(X[:3])


def test_continuing_joins_histories_and_counts_on(fitted):
    dim, _ = fitted
    state = FittedState.of(dim)
    joined = state.continued_by(state.module, {}, state.history)
    assert joined.n_iter == 2 * state.n_iter
    assert [entry["epoch"] for entry in joined.history] == list(range(1, 2 * state.n_iter + 1))
    assert joined.loss_curve == state.loss_curve * 2
    assert torch.equal(joined.module.encoder.to_code.weight, state.module.encoder.to_code.weight)


def test_the_rng_stream_keeps_the_plain_form_of_existing_files_and_goes_on_exactly():
    rng = np.random.RandomState(7)
    rng.standard_normal()  # leaves half of a Box-Muller pair cached: has_gauss = 1
    plain = json.loads(json.dumps(rng_to_plain(rng)))  # as a model file's JSON holds it
    assert set(plain) == {"bit_generator", "keys", "pos", "has_gauss", "cached_gaussian"}
    assert plain["bit_generator"] == "MT19937" and len(plain["keys"]) == 624
    assert plain["has_gauss"] == 1
    copy = rng_from_plain(plain)
    assert copy.standard_normal() == rng.standard_normal()  # the cached one
    np.testing.assert_array_equal(copy.randint(0, 2**31, 10), rng.randint(0, 2**31, 10))
