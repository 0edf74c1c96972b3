"""One training call (``dimlearn.training``): what it returns and what it leaves alone."""

import numpy as np
import pytest
import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn.inputs import ArrayBatches, channel_stats, resolve_layout, training_data
from dimlearn.net import keeps_data_on_device
from dimlearn.settings import Settings
from dimlearn.training import train


def images(n=40):
    return np.random.default_rng(0).integers(0, 256, size=(n, 8, 8), dtype=np.uint8)


def dataset(n=40):
    X = images(n)
    layout = resolve_layout(X.shape[1:], None, "auto")
    return ArrayBatches(X, layout, *channel_stats(X, layout))


def config(**params):
    return Settings.from_params(
        DeepInfomaxTransformer(width=4, latent_dim=4, device="cpu", **params).get_params()
    )


def test_a_training_call_returns_the_kept_parts_and_their_adam_moments_only():
    state = train(images(), config(alpha=0.0), seed=0, max_epochs=2)
    assert state.module.global_critic is None  # alpha=0: nothing trained it
    assert not state.module.training and next(state.module.parameters()).device.type == "cpu"
    names = {name for name, _ in state.module.named_parameters()}
    assert set(state.optimizer_state) <= names
    assert all(not name.startswith("global_critic") for name in state.optimizer_state)
    assert len(state.history) == 2 and state.n_iter == 2


def test_a_training_call_leaves_the_global_rng_and_its_inputs_alone():
    X = images()
    before = X.copy()
    torch.manual_seed(5)
    rng_state = torch.get_rng_state()
    runs = [train(X, config(), seed=3, max_epochs=1) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), rng_state)
    np.testing.assert_array_equal(X, before)
    first, second = (run.module.state_dict() for run in runs)
    assert all(torch.equal(first[key], second[key]) for key in first)  # the seed is all


def test_the_training_set_stays_on_the_host_on_the_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert not keeps_data_on_device(dataset(), config(), cpu)
    assert keeps_data_on_device(dataset(), config(data_on_device=True), cpu)


def test_batch_sizes_must_give_every_process_rows():
    X = images(100)
    layout = resolve_layout(X.shape[1:], None, "auto")
    settings = config(batch_size=8).optimisation
    training_data(X, layout, None, settings, seed=0, hold_out=False, processes=4)
    with pytest.raises(ValueError, match=r"batch_size=3 .* 4 processes"):
        small = config(batch_size=3).optimisation
        training_data(X, layout, None, small, seed=0, hold_out=False, processes=4)
