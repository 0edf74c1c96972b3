import pytest
import torch
from torch import nn

from dimlearn.critics import GlobalDotCritic, LocalLocalCritic, PriorDiscriminator
from dimlearn.networks import (
    MAX_FLAT_WEIGHTS,
    ConvEncoder,
    MLPEncoder,
    TokenEncoder,
    check_encoder,
    check_encoder_output,
)


@pytest.mark.parametrize(
    ("side", "local_side", "last_side"),
    [(96, 24, 12), (64, 16, 8), (32, 8, 4), (28, 7, 3), (16, 4, 2), (12, 6, 3), (8, 4, 2)],
)
def test_conv_encoder_adapts_its_strides_to_the_image_size(side, local_side, last_side):
    # a quarter of the side (the DIM paper's two stride-2 layers) while that leaves 4x4 or
    # more; small images keep a 4x4 local map
    enc = ConvEncoder(in_channels=3, height=side, width_px=side, latent_dim=5, width=4)
    local_map, mu, logvar = enc(torch.zeros(2, 3, side, side))
    assert local_map.shape == (2, 8, local_side, local_side)
    assert enc.local_shape == (8, local_side, local_side)
    assert mu.shape == logvar.shape == (2, 5)
    assert enc.feature_dims["conv"] == 16 * last_side * last_side


def test_non_square_images_adapt_per_axis():
    enc = ConvEncoder(in_channels=1, height=8, width_px=32, latent_dim=5, width=4)
    local_map, _, _ = enc(torch.zeros(2, 1, 8, 32))
    assert local_map.shape == (2, 8, 4, 8)


def test_images_of_16_and_more_keep_the_reference_layers():
    enc = ConvEncoder(in_channels=3, height=32, width_px=32, latent_dim=5, width=4)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((4, 4), (2, 2), (1, 1))] * 3


def test_reference_width_is_the_dim_paper_network():
    enc = ConvEncoder(in_channels=3, height=32, width_px=32, latent_dim=64, width=64)
    convs = [m.out_channels for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 128, 256]
    assert enc.to_code.in_features == 1024
    assert enc.local_shape == (128, 8, 8)


def test_mlp_encoder_exposes_a_one_position_map():
    enc = MLPEncoder(n_features=10, latent_dim=3, width=4)
    local_map, mu, _ = enc(torch.zeros(4, 10))
    assert local_map.shape == (4, 16, 1, 1)
    assert mu.shape == (4, 3)


def test_frozen_discriminator_passes_gradient_to_codes_only():
    disc = PriorDiscriminator(latent_dim=3, hidden=5)
    z = torch.randn(4, 3, requires_grad=True)
    disc.frozen(z).sum().backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())


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


# -- wide tables: the layers that read every feature's token stay bounded ----------------


def _table_module(n_features, width=64):
    """The default networks for rows of ``n_features``, on the meta device (shapes only,
    no memory), as a fit or a model file builds them."""
    from dimlearn import DeepInfomaxTransformer
    from dimlearn.infomax import build_module
    from dimlearn.inputs import resolve_layout
    from dimlearn.settings import Settings

    config = Settings.from_params(DeepInfomaxTransformer(width=width).get_params())
    with torch.device("meta"):
        return build_module(config, resolve_layout((n_features,), None, "auto"))


@pytest.mark.parametrize("n_features", [5_000, 20_000, 65_536])
def test_wide_tables_keep_every_layer_within_the_bound(n_features):
    # before the bound: 4 w^2 F weights in the encoder's fc layer (82 M at 5,000 features,
    # 328 M at 20,000) and 512 w F in the global critic's summary (164 M, 655 M)
    module = _table_module(n_features)
    sizes = {name: p.numel() for name, p in module.named_parameters()}
    assert max(sizes.values()) <= MAX_FLAT_WEIGHTS, max(sizes, key=sizes.get)
    tokens = 2 * n_features * 64  # FeatureTokens' own weight and bias per feature
    assert sum(sizes.values()) <= 2 * MAX_FLAT_WEIGHTS + tokens + 2_000_000
    projection = module.encoder.to_fc[0]
    assert isinstance(projection, torch.nn.Conv2d) and projection.kernel_size == (1, 1)
    assert module.encoder.local_shape == (64, n_features, 1)  # the local map is unchanged


@pytest.mark.parametrize(("n_features", "projected"), [(2_048, False), (2_049, True)])
def test_the_projection_starts_where_the_fc_layer_would_pass_the_bound(n_features, projected):
    fc = _table_module(n_features).encoder.to_fc
    linear = next(m for m in fc if isinstance(m, torch.nn.Linear))
    assert isinstance(fc[0], torch.nn.Conv2d) == projected
    assert linear.weight.numel() <= MAX_FLAT_WEIGHTS
    assert (linear.in_features == 64 * n_features) == (not projected)


@pytest.mark.parametrize("n_features", [7, 64, 1_024])
def test_narrower_tables_keep_their_networks(n_features):
    # the networks of existing models: files and pickles rebuild them from the parameters
    module = _table_module(n_features)
    shapes = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    assert shapes["encoder.to_fc.1.weight"] == (256, 64 * n_features)
    assert "encoder.to_fc.0.weight" not in shapes
    assert shapes["global_critic.image_side.0.weight"] == (64, 64, 3, 3)
    assert shapes["global_critic.image_side.3.0.weight"] == (512, 64 * n_features)


def test_images_keep_their_global_critic_whatever_their_size():
    enc = ConvEncoder(in_channels=1, height=256, width_px=256, latent_dim=5, width=64)
    with torch.device("meta"):
        critic = GlobalDotCritic(enc.local_shape, 5, 512)
    assert critic.image_side[0].out_channels == 64


def test_too_many_features_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match="width=63 or less, tabular_encoder='mlp'") as error:
        _table_module(65_537)
    assert "reduce the features to 65,536 or fewer" in str(error.value)
    _table_module(65_537, width=63)  # the width it names builds
    with pytest.raises(ValueError, match="Set tabular_encoder='mlp', or reduce"):
        TokenEncoder(n_features=2**22 + 1, latent_dim=2, width=1)  # no width is narrow enough


# -- ConvEncoder's stages, and the contract of an encoder -------------------------------


def test_conv_encoder_stages_are_cut_at_its_flatten_and_keep_the_weight_names():
    torch.manual_seed(0)
    enc = ConvEncoder(in_channels=3, height=32, width_px=32, latent_dim=5, width=4).eval()
    # the names that model files (tests/fixtures/0_2_*, 0_3_*) hold
    assert [k for k in enc.state_dict() if k.endswith("weight")] == [
        "to_local.0.weight",
        "to_local.2.weight",
        "to_local.3.weight",
        "to_fc.0.weight",
        "to_fc.1.weight",
        "to_fc.4.weight",
        "to_fc.5.weight",
        "to_code.weight",
    ]
    x = torch.randn(4, 3, 32, 32)
    local_map = enc.to_local(x)
    conv_map = enc.to_conv(local_map)
    assert conv_map.shape == (4, *enc.conv_shape)
    assert torch.equal(conv_map, enc.to_fc[:3](local_map))  # the last conv layer's map
    assert torch.equal(enc.conv_to_fc(conv_map), enc.to_fc(local_map))
    assert torch.equal(enc.features(x, "conv"), conv_map.flatten(1))
    _, with_conv, mu, _ = enc.with_conv_map(x)
    assert torch.equal(with_conv, conv_map) and torch.equal(mu, enc.features(x, "code"))


class Bare(nn.Module):
    def __init__(self, **attributes):
        super().__init__()
        self.__dict__.update(attributes)


@pytest.mark.parametrize(
    ("encoder", "settings", "missing"),
    [
        (Bare(), {}, 'local_shape, the .* feature_dims, a dict with "code": 8'),
        (Bare(local_shape=(4, 2, 2), feature_dims={"code": 3}), {}, '"code": 8 \\(latent_dim'),
        (
            Bare(local_shape=(4, 2, 2), feature_dims={"code": 8}),
            dict(feature_level="fc"),
            'feature_dims\\["fc"\\] and features\\(x, level\\) for feature_level="fc"',
        ),
        (
            Bare(local_shape=(4, 2, 2), feature_dims={"code": 8}),
            dict(local_scales=2),
            "with_conv_map\\(x\\) and conv_shape, for local_scales=2",
        ),
    ],
)
def test_an_encoder_lacking_a_part_of_the_contract_is_named(encoder, settings, missing):
    with pytest.raises(ValueError, match=f"lacks what training needs of it: .*{missing}"):
        check_encoder(encoder, latent_dim=8, **settings)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        check_encoder(lambda x: x, latent_dim=8)


def test_an_encoder_output_of_the_wrong_shape_is_named():
    enc = ConvEncoder(in_channels=1, height=8, width_px=8, latent_dim=5, width=2)
    check_encoder_output(enc, torch.zeros(2, 1, 8, 8), latent_dim=5)
    with pytest.raises(ValueError, match=r"must return \(local_map, mu, logvar\) of shapes"):
        check_encoder_output(enc, torch.zeros(2, 1, 8, 8), latent_dim=6)
    enc.local_shape = (3, 4, 4)
    with pytest.raises(ValueError, match=r"returned \[\(2, 4, 4, 4\), \(2, 5\), \(2, 5\)\]"):
        check_encoder_output(enc, torch.zeros(2, 1, 8, 8), latent_dim=5)
    assert enc.training  # the probe ran in eval mode and gave the mode back
