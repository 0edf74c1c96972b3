"""The typed, frozen settings built once from the estimator's parameters."""

import dataclasses

import pytest
import torch

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


def layout(shape):
    from dimlearn.inputs import resolve_layout

    return resolve_layout(shape, None, "auto")


def test_auto_precision_is_bfloat16_only_where_the_device_computes_it(monkeypatch):
    import dimlearn.config

    config = TrainingConfig.from_params(DeepInfomaxTransformer(precision="auto").get_params())
    cpu = torch.device("cpu")
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(dimlearn.config, "native_bfloat16", lambda device, n=native: n)
        assert config.resolved(layout((8, 8)), cpu).precision == expected
    pinned = dataclasses.replace(config, precision="float32")
    assert pinned.resolved(layout((8, 8)), cpu).precision == "float32"


@pytest.mark.parametrize(
    "params, shape, match",
    [
        ({"alpha": 0.0, "beta": 0.0}, (8, 8), "nothing rewards information"),
        ({"temperature": 0.1, "critic": "concat"}, (8, 8), "critic='dot'"),
        ({"precision": "float16"}, (8, 8), "needs a CUDA device"),
        ({"augment": True}, (5,), "crops and flips images"),
        ({"augment": True}, (8, 8), "Set views=1 to train one augmented view"),
        ({"augment": True, "views": 2}, (8, 8), "Set views=1 to train one augmented view"),
        ({"delta": 0.5, "tabular_encoder": "mlp"}, (5,), "one position"),
    ],
)
def test_combinations_that_cannot_train_are_refused_with_the_fix(params, shape, match):
    config = TrainingConfig.from_params(DeepInfomaxTransformer(**params).get_params())
    with pytest.raises(ValueError, match=match):
        config.resolved(layout(shape), torch.device("cpu"))
