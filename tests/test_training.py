"""One training call (``dimlearn.training``): what it returns and what it leaves alone."""

import numpy as np
import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn.inputs import ArrayBatches, channel_stats, resolve_layout
from dimlearn.settings import Settings
from dimlearn.training import keeps_data_on_device, train_networks


def dataset(n=40):
    X = np.random.default_rng(0).integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    layout = resolve_layout(X.shape[1:], None, "auto")
    return ArrayBatches(X, layout, *channel_stats(X, layout))


def config(**params):
    return Settings.from_params(
        DeepInfomaxTransformer(width=4, latent_dim=4, **params).get_params()
    )


def test_a_training_call_returns_the_kept_parts_and_their_adam_moments_only():
    run = train_networks(
        dataset(), None, config(alpha=0.0), seed=0, device=torch.device("cpu"), max_epochs=2
    )
    assert run.module.global_critic is None  # alpha=0: nothing trained it
    assert not run.module.training and next(run.module.parameters()).device.type == "cpu"
    names = {name for name, _ in run.module.named_parameters()}
    assert set(run.optimizer_state) <= names
    assert all(not name.startswith("global_critic") for name in run.optimizer_state)
    assert len(run.history) == 2


def test_a_training_call_leaves_the_global_rng_and_its_inputs_alone():
    data = dataset()
    before = data.X.copy()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    device = torch.device("cpu")
    runs = [train_networks(data, None, config(), seed=3, device=device, max_epochs=1)]
    runs.append(train_networks(data, None, config(), seed=3, device=device, max_epochs=1))
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(data.X, before)
    first, second = (run.module.state_dict() for run in runs)
    assert all(torch.equal(first[key], second[key]) for key in first)  # the seed is all


def test_the_training_set_stays_on_the_host_on_the_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert not keeps_data_on_device(dataset(), config(), cpu)
    assert keeps_data_on_device(dataset(), config(data_on_device=True), cpu)
