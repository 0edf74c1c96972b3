"""The Deep InfoMax module: loss terms of a batch, negatives, which part each term trains,
and the module built from a config (and from saved weights)."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from torch import nn

from dimlearn import DeepInfomaxTransformer, ModelFileError, save
from dimlearn.infomax import (
    DeepInfomaxModule,
    build_module,
    kept_parts,
    module_from_state,
    trained_parts,
)
from dimlearn.inputs import resolve_layout
from dimlearn.networks import ConvEncoder, MLPEncoder, TokenEncoder
from dimlearn.settings import Settings


def config(**params):
    return Settings.from_params(
        DeepInfomaxTransformer(width=4, latent_dim=8, **params).get_params()
    )


def test_module_computes_only_requested_terms_and_they_are_differentiable():
    torch.manual_seed(0)
    module = DeepInfomaxModule(ConvEncoder(1, 8, 8, 4, 4), latent_dim=4, critic_hidden=8)
    x = torch.randn(6, 1, 8, 8)
    terms = module.terms(x, ("global", "local", "prior"))
    assert set(terms) == {"global", "local", "prior"}
    sum(terms.values()).backward()
    assert module.local_critic.from_map.weight.grad is not None
    assert module.global_critic.summary[0].weight.grad is not None
    assert set(module.terms(x, ("local",))) == {"local"}


def test_critics_at_init_score_near_chance():
    # untrained critics can't tell pairs apart: each JSD term starts near 2 log 2
    torch.manual_seed(0)
    module = DeepInfomaxModule(MLPEncoder(6, 3, 4), latent_dim=3, critic_hidden=16)
    terms = module.terms(torch.randn(64, 6), ("global", "local"))
    for value in terms.values():
        assert 1.2 < value.item() < 1.6


@pytest.mark.parametrize("critic", ["concat", "dot"])
@pytest.mark.parametrize("local", [False, True])
def test_all_pairs_negatives_are_every_other_image_never_itself(critic, local):
    from dimlearn.critics import CRITICS
    from dimlearn.infomax import contrast

    torch.manual_seed(0)
    local_shape = (6, 3, 3)
    module = CRITICS[critic][int(local)](local_shape, latent_dim=4, hidden=8)
    local_map, z = torch.randn(5, *local_shape), torch.randn(5, 4)
    pos, neg = contrast(module, local_map, z, "all")
    tail = (3, 3) if local else ()
    assert pos.shape == (5, *tail) and neg.shape == (5, 4, *tail)
    # by hand: code i against image j, one pair at a time
    image_part, code_part = module.embed(local_map, z)

    def score(j, i):
        return module.pair_scores(image_part[j : j + 1], code_part[i : i + 1])[0]

    for i in range(5):
        torch.testing.assert_close(pos[i], score(i, i))
        others = [j for j in range(5) if j != i]
        for k, j in enumerate(others):
            torch.testing.assert_close(neg[i, k], score(j, i))
    # shuffle mode pairs code i with image perm[i], with the same positives
    perm = torch.tensor([1, 2, 3, 4, 0])
    pos_s, neg_s = contrast(module, local_map, z, "shuffle", perm)
    torch.testing.assert_close(pos_s, pos)
    torch.testing.assert_close(neg_s[:, 0], torch.stack([score(perm[i], i) for i in range(5)]))


@pytest.mark.parametrize("critic", ["concat", "dot"])
@pytest.mark.parametrize("negatives", ["shuffle", "all"])
@pytest.mark.parametrize("estimator", ["jsd", "infonce", "dv"])
def test_every_objective_variant_backpropagates(critic, negatives, estimator):
    torch.manual_seed(0)
    module = DeepInfomaxModule(
        ConvEncoder(1, 8, 8, 4, 4),
        4,
        8,
        critic=critic,
        negatives=negatives,
        mi_estimator=estimator,
    )
    terms = module.terms(torch.randn(6, 1, 8, 8), ("global", "local", "prior"))
    assert all(value.isfinite() for value in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_forward_draws_from_the_generator_it_is_given_and_holds_no_state():
    """What a step computes is decided by its arguments: the same generator seed gives the
    same terms bit for bit, the global RNG is not drawn from, the module keeps nothing of
    the call, and ``part=WholeBatch`` is the same as no part."""
    from dimlearn.critics import WholeBatch

    torch.manual_seed(0)
    module = DeepInfomaxModule(
        ConvEncoder(1, 8, 8, 4, 4),
        4,
        8,
        negatives="shuffle",
        prior="adversarial",
        local_local=True,
    )
    x = torch.randn(6, 1, 8, 8)
    names = ("global", "local", "local_local", "prior")
    attributes = set(vars(module))
    rng = torch.get_rng_state()

    def step(seed, **part):
        return module(x, names, generator=torch.Generator().manual_seed(seed), **part)

    first, again, whole = step(1), step(1), step(1, part=WholeBatch(6))
    assert torch.equal(torch.get_rng_state(), rng)
    for name in names:
        assert torch.equal(first[name], again[name]) and torch.equal(first[name], whole[name])
    assert any(not torch.equal(first[n], step(2)[n]) for n in names)
    by_terms = module.terms(x, names, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(first[n], by_terms[n]) for n in names)
    assert set(vars(module)) == attributes
    assert not hasattr(module, "generator") and not hasattr(module, "part")


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


def test_optional_parts_leave_the_other_initial_weights_unchanged():
    def build(**kwargs):
        torch.manual_seed(0)
        encoder = ConvEncoder(1, 8, 8, latent_dim=4, width=4)
        return DeepInfomaxModule(encoder, 4, critic_hidden=8, **kwargs).state_dict()

    plain = build()
    for extra in (build(prior="adversarial"), build(local_local=True)):
        assert set(plain) < set(extra)
        assert all(torch.equal(plain[key], extra[key]) for key in plain)


@pytest.mark.parametrize(
    "params, trained",
    [
        ({}, {"encoder", "local_critic"}),
        ({"alpha": 0.5}, {"encoder", "global_critic", "local_critic"}),
        ({"alpha": 1.0, "beta": 0.0}, {"encoder", "global_critic"}),
        ({"delta": 0.5}, {"encoder", "local_critic", "local_local_critic"}),
        ({"prior": "adversarial"}, {"encoder", "local_critic", "prior_discriminator"}),
        ({"prior": "adversarial", "gamma": 0.0}, {"encoder", "local_critic"}),
    ],
)
def test_the_parts_each_term_trains(params, trained):
    assert trained_parts(config(**params)) == trained
    assert kept_parts(config(**params)) == trained | {"encoder", "local_critic"}


def test_a_fitted_model_keeps_only_the_parts_it_trained(digit_images, fast):
    X, _ = digit_images
    for params in ({}, {"alpha": 0.5, "delta": 0.5, "prior": "adversarial"}):
        module = DeepInfomaxTransformer(**fast, **params).fit(X[:40]).module_
        children = {name for name, _ in module.named_children()}
        assert children == kept_parts(config(**params))


def test_the_builder_follows_the_layout():
    images = build_module(config(), resolve_layout((16, 16, 3), None, "auto"))
    rows = build_module(config(), resolve_layout((10,), None, "auto"))
    assert isinstance(images.encoder, ConvEncoder) and isinstance(rows.encoder, TokenEncoder)
    mlp = build_module(config(tabular_encoder="mlp"), resolve_layout((10,), None, "auto"))
    assert isinstance(mlp.encoder, MLPEncoder)
    assert images.encoder.feature_dims["code"] == rows.encoder.feature_dims["code"] == 8


def test_weights_that_do_not_fit_the_networks_are_named():
    layout = resolve_layout((16, 16, 3), None, "auto")
    state = build_module(config(), layout).state_dict()
    module, folded = module_from_state(config(), layout, state)
    assert folded == [] and module.state_dict().keys() == state.keys()
    with pytest.raises(ValueError, match=r"encoder.to_code.weight is \(16, 64\)"):
        module_from_state(
            Settings.from_params(DeepInfomaxTransformer(width=4, latent_dim=4).get_params()),
            layout,
            state,
        )


# -- the encoder parameter: an encoder of one's own ----------------------------------------


class TinyEncoder(nn.Module):
    """An encoder of one's own: one convolution is the local map, the code comes from its
    mean over positions (module-level, so that pickles and skops find it)."""

    def __init__(self, in_channels, height, width_px, latent_dim, width):
        super().__init__()
        self.local = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 2 * latent_dim)
        self.local_shape = (width, height, width_px)
        self.feature_dims = {"code": latent_dim}

    def forward(self, x):
        local_map = self.local(x)
        mu, logvar = self.head(local_map.mean((2, 3))).chunk(2, dim=1)
        return local_map, mu, logvar


def test_an_encoder_of_ones_own_is_called_with_the_sizes_as_keywords():
    calls = []

    def factory(**sizes):
        calls.append(sizes)
        built = TokenEncoder if "n_features" in sizes else ConvEncoder
        return built(**sizes)

    images = build_module(config(encoder=factory), resolve_layout((12, 16, 3), None, "auto"))
    rows = build_module(config(encoder=factory), resolve_layout((10,), None, "auto"))
    assert calls == [
        dict(in_channels=3, height=12, width_px=16, latent_dim=8, width=4),
        dict(n_features=10, latent_dim=8, width=4),
    ]
    assert isinstance(images.encoder, ConvEncoder) and isinstance(rows.encoder, TokenEncoder)


def test_the_conv_encoder_given_as_a_class_trains_as_auto_does(digit_images, fast):
    X = digit_images[0][:64]
    auto = DeepInfomaxTransformer(**fast).fit(X)
    given = DeepInfomaxTransformer(**fast, encoder=ConvEncoder).fit(X)
    assert np.array_equal(given.transform(X), auto.transform(X))


def test_an_encoder_of_ones_own_trains_transforms_scores_and_pickles(digit_images, fast, tmp_path):
    X = digit_images[0][:64]
    dim = DeepInfomaxTransformer(**fast, encoder=TinyEncoder).fit(X)
    codes = dim.transform(X)
    assert codes.shape == (64, 8) and isinstance(dim.module_.encoder, TinyEncoder)
    assert np.isfinite(dim.score(X))
    joblib.dump(dim, tmp_path / "dim.joblib")
    for copy in (pickle.loads(pickle.dumps(dim)), joblib.load(tmp_path / "dim.joblib")):
        assert np.array_equal(copy.transform(X), codes)
    skops_io = pytest.importorskip("skops.io", reason="needs the skops extra")
    skops_io.dump(dim, tmp_path / "dim.skops")
    trusted = skops_io.get_untrusted_types(file=tmp_path / "dim.skops")
    assert f"{TinyEncoder.__module__}.TinyEncoder" in trusted  # the user passes it as trusted
    from_skops = skops_io.load(tmp_path / "dim.skops", trusted=trusted)
    assert np.array_equal(from_skops.transform(X), codes)
    with pytest.raises(ModelFileError, match="cannot rebuild from a model file. Use joblib"):
        save(dim, tmp_path / "dim.safetensors")
    with pytest.raises(ValueError, match="gives features at \\['code'\\] only"):
        dim.set_params(feature_level="fc").transform(X)
    assert pickle.loads(pickle.dumps(dim)).feature_level == "fc"  # set after the fit: kept


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(feature_level="fc"), 'feature_dims\\["fc"\\] and features'),
        (dict(local_scales=2), "with_conv_map\\(x\\) and conv_shape"),
        (dict(encoder=lambda **sizes: TinyEncoder(**{**sizes, "latent_dim": 3})), '"code": 8'),
        (dict(encoder=lambda **sizes: nn.Identity()), "not a torch.nn.Module|lacks"),
    ],
)
def test_an_encoder_that_breaks_the_contract_is_refused_before_training(fast, params, message):
    dim = DeepInfomaxTransformer(**{**fast, "encoder": TinyEncoder, **params})
    with pytest.raises(ValueError, match=message):
        dim.fit(np.random.default_rng(0).random((16, 8, 8)))
    assert not hasattr(dim, "module_")
