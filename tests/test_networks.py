import pytest
import torch

from dimlearn.infomax import DeepInfomaxModule
from dimlearn.networks import ConvEncoder, MLPEncoder


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
    from dimlearn.infomax import contrast
    from dimlearn.networks import CRITICS

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
