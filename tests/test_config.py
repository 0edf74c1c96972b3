"""The typed, frozen settings built once from the estimator's parameters."""

import dataclasses

import pytest

from dimlearn import DeepInfomaxTransformer
from dimlearn.config import TERM_NAMES, TrainingConfig


def test_the_config_holds_the_parameters_of_the_same_names():
    params = DeepInfomaxTransformer(alpha=0.5, width=16, lr=3e-4).get_params()
    config = TrainingConfig.from_params(params)
    for field in dataclasses.fields(config):
        assert getattr(config, field.name) == params[field.name]
    assert config.weights == dict(zip(TERM_NAMES, (0.5, 1.0, 0.1, 0.0), strict=True))
    assert config.critic_hidden == 128


def test_the_config_is_frozen_and_misses_no_parameter():
    config = TrainingConfig.from_params(DeepInfomaxTransformer().get_params())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    with pytest.raises(KeyError):
        TrainingConfig.from_params({"alpha": 0.0})
