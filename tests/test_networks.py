import pytest
import torch

from dimlearn.networks import ConvEncoder, DeepInfomaxModule, MLPEncoder


@pytest.mark.parametrize(("side", "local_side"), [(32, 8), (28, 7), (8, 2)])
def test_conv_encoder_local_map_is_a_quarter_of_the_image(side, local_side):
    enc = ConvEncoder(in_channels=3, height=side, width_px=side, latent_dim=5, width=4)
    local_map, mu, logvar = enc(torch.zeros(2, 3, side, side))
    assert local_map.shape == (2, 8, local_side, local_side)
    assert enc.local_shape == (8, local_side, local_side)
    assert mu.shape == logvar.shape == (2, 5)


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
