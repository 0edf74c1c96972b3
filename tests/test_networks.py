import pytest
import torch

from dimlearn.networks import ConvEncoder, LocalLocalCritic, MLPEncoder, PriorDiscriminator


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
