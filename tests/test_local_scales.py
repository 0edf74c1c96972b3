"""Two local scales (``local_scales=2``) and the critics' width (``critic_width``): issue 23,
part 2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dimlearn
from dimlearn import DeepInfomaxTransformer
from dimlearn.infomax import build_module
from dimlearn.inputs import resolve_layout
from dimlearn.settings import Settings


def _images(n=64, side=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _module(**params):
    config = Settings.from_params(
        DeepInfomaxTransformer(width=4, latent_dim=8, views=1, **params).get_params()
    )
    return build_module(config, resolve_layout((16, 16, 3), None, "auto")).eval()


def test_the_local_term_is_the_mean_over_the_two_maps():
    """With the conv map's critic scoring every pair 0, its infoNCE loss is log(B) exactly,
    so the local term is the mean of the local map's term and log(B)."""
    module = _module(local_scales=2)
    assert module.conv_local_critic.map_side[0].in_channels == 16  # the last conv: 4 * width
    with torch.no_grad():
        for weight in module.conv_local_critic.parameters():
            weight.zero_()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    two = module.terms(x, ("local", "prior"))
    module.conv_local_critic = None
    torch.manual_seed(1)
    one = module.terms(x, ("local", "prior"))
    assert two["prior"] == one["prior"]  # the same codes
    assert two["local"].item() == pytest.approx((one["local"].item() + math.log(6)) / 2, rel=1e-6)


def test_two_scales_train_the_second_critic_and_change_the_codes(fast):
    X = _images()
    two = DeepInfomaxTransformer(**fast, local_scales=2).fit(X)
    again = DeepInfomaxTransformer(**fast, local_scales=2).fit(X)
    one = DeepInfomaxTransformer(**fast).fit(X)
    assert two.module_.conv_local_critic is not None
    assert getattr(one.module_, "conv_local_critic", None) is None
    assert np.array_equal(two.transform(X), again.transform(X))  # same seed, same numbers
    assert not np.array_equal(two.transform(X), one.transform(X))
    assert {"train_local", "train_prior"} <= set(two.history_[-1])


def test_critic_width_sets_every_critics_units(fast):
    assert _module().local_critic.map_side[0].out_channels == 32  # None: 8 * width
    module = _module(critic_width=12, local_scales=2, alpha=0.5)
    assert module.local_critic.map_side[0].out_channels == 12
    assert module.conv_local_critic.map_side[0].out_channels == 12
    assert module.global_critic.code_side[0].out_features == 12
    dim = DeepInfomaxTransformer(**fast, critic_width=12).fit(_images())
    assert dim.module_.local_critic.code_side[-1].out_features == 12


@pytest.mark.parametrize(
    ("params", "rows", "match"),
    [
        (dict(local_scales=2), True, "local_scales=2 contrasts .* table rows"),
        (dict(local_scales=2, alpha=1.0, beta=0.0), False, "beta=0 turns that term off"),
        (dict(local_scales=3), False, "local_scales"),
        (dict(critic_width=0), False, "critic_width"),
    ],
)
def test_what_cannot_train_is_refused_before_training(fast, params, rows, match):
    X = _images()
    X = X.reshape(len(X), -1)[:, :20].astype(float) if rows else X
    dim = DeepInfomaxTransformer(**fast, **params)
    with pytest.raises(ValueError, match=match):
        dim.fit(X)
    assert not hasattr(dim, "history_")


def test_model_files_keep_the_parameters_and_the_second_critic_with_training_state(fast, tmp_path):
    X = _images()
    dim = DeepInfomaxTransformer(**fast, local_scales=2, critic_width=12).fit(X)
    codes = dim.transform(X)
    with_state = dimlearn.load(
        dimlearn.save(dim, tmp_path / "all.safetensors", include_training_state=True)
    )
    without = dimlearn.load(dimlearn.save(dim, tmp_path / "codes.safetensors"))
    assert (with_state.local_scales, with_state.critic_width) == (2, 12)
    assert with_state.module_.conv_local_critic is not None
    assert getattr(without.module_, "conv_local_critic", None) is None  # for transform only
    assert np.array_equal(with_state.transform(X), codes)
    assert np.array_equal(without.transform(X), codes)
    with pytest.warns(UserWarning, match="no trained conv_local_critic"):
        without.set_params(warm_start=True, max_epochs=1).fit(X)
    continued = with_state.set_params(warm_start=True, max_epochs=1).fit(X)
    assert continued.n_iter_ == fast["max_epochs"] + 1


def test_pickles_without_the_parameters_read_as_0_3_built_its_networks(fast):
    """dimlearn 0.3.0 had one local map and critics of 8 * width units: its pickles read
    ``local_scales=1`` and ``critic_width=None`` and continue as they trained."""
    X = _images()
    fitted = DeepInfomaxTransformer(**fast).fit(X)
    state = fitted.__getstate__()
    del state["local_scales"], state["critic_width"]
    del state["_dimlearn_version"]  # pickles of 0.3.0 did not say
    older = DeepInfomaxTransformer.__new__(DeepInfomaxTransformer)
    older.__setstate__(state)
    assert (older.local_scales, older.critic_width) == (1, None)
    assert np.array_equal(older.transform(X), fitted.transform(X))
    assert older.set_params(warm_start=True, max_epochs=1).fit(X).n_iter_ == 3
