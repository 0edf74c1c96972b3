import math

import pytest
import torch

from dimlearn.objectives import (
    DeepInfomaxLoss,
    adversarial_prior_losses,
    derangement,
    dv_mi_loss,
    infonce_mi_loss,
    jsd_mi_loss,
    mi_loss,
    prior_kl,
    sample_code,
)


def test_constant_zero_critic_gives_two_log_two():
    zeros = torch.zeros(16)
    assert jsd_mi_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    assert mi_loss(torch.zeros(4, 3, 3), torch.zeros(4, 3, 3)).item() == pytest.approx(
        2 * math.log(2), abs=1e-6
    )


def test_perfectly_separating_critic_gives_loss_near_zero():
    pos, neg = torch.full((8,), 30.0), torch.full((8,), -30.0)
    assert mi_loss(pos, neg).item() < 1e-10


def test_inverted_critic_is_penalised_linearly():
    # softplus(x) ~ x for large x: a critic that swaps the labels pays about 2 * margin
    pos, neg = torch.full((8,), -10.0), torch.full((8,), 10.0)
    assert mi_loss(pos, neg).item() == pytest.approx(20.0, abs=1e-3)


def test_jsd_matches_binary_cross_entropy_by_hand():
    pos, neg = torch.tensor([1.0, -0.5]), torch.tensor([0.2, 2.0])
    sig = torch.sigmoid
    expected = -(torch.log(sig(pos)).mean() + torch.log(1 - sig(neg)).mean())
    assert jsd_mi_loss(pos, neg).item() == pytest.approx(expected.item(), rel=1e-6)


def test_local_loss_averages_over_positions():
    pos = torch.zeros(2, 2, 2)
    pos[0, 0, 0] = 50.0  # one confident position out of 8 pairs
    neg = torch.zeros(2, 2, 2)
    expected = (7 * math.log(2) + 0.0) / 8 + math.log(2)
    assert mi_loss(pos, neg).item() == pytest.approx(expected, abs=1e-6)


def test_kl_of_standard_normal_code_is_zero():
    assert prior_kl(torch.zeros(5, 7), torch.zeros(5, 7)).item() == 0.0


def test_kl_by_hand_sums_dims_and_averages_batch():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # sample 0: 0.5 * 1 + 0.5 * (2 - 1 - log 2); sample 1: 0
    expected = (0.5 + 0.5 * (1 - math.log(2))) / 2
    assert prior_kl(mu, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_sample_code_is_reparameterised():
    torch.manual_seed(0)
    mu = torch.full((20000, 1), 3.0, requires_grad=True)
    logvar = torch.full((20000, 1), math.log(4.0))
    z = sample_code(mu, logvar)
    assert z.mean().item() == pytest.approx(3.0, abs=0.05)
    assert z.std().item() == pytest.approx(2.0, abs=0.05)
    z.sum().backward()
    assert mu.grad is not None


@pytest.mark.parametrize("n", [2, 3, 7, 128])
def test_derangement_never_pairs_a_sample_with_itself(n):
    for _ in range(50):
        perm = derangement(n)
        assert sorted(perm.tolist()) == list(range(n))
        assert (perm != torch.arange(n)).all()


def test_derangement_refuses_a_batch_of_one():
    with pytest.raises(ValueError, match="no in-batch negatives"):
        derangement(1)


def test_infonce_constant_critic_gives_log_of_candidates():
    pos, neg = torch.zeros(6), torch.zeros(6, 4)
    assert infonce_mi_loss(pos, neg).item() == pytest.approx(math.log(5), abs=1e-6)


def test_infonce_perfect_critic_gives_loss_near_zero():
    assert infonce_mi_loss(torch.full((6,), 40.0), torch.full((6, 4), -40.0)).item() < 1e-10


def test_infonce_by_hand():
    pos, neg = torch.tensor([1.0]), torch.tensor([[0.0, 2.0]])
    expected = -math.log(math.e / (math.e + 1 + math.e**2))
    assert infonce_mi_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_dv_by_hand():
    pos, neg = torch.tensor([1.0, 3.0]), torch.tensor([[0.0], [math.log(3.0)]])
    expected = -(2.0 - math.log((1 + 3) / 2))
    assert dv_mi_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("estimator", ["jsd", "infonce", "dv"])
def test_mi_terms_accept_one_or_many_negatives(estimator):
    pos = torch.randn(4, 3, 3)
    one = mi_loss(pos, torch.randn(4, 3, 3), estimator)
    many = mi_loss(pos, torch.randn(4, 5, 3, 3), estimator)
    assert one.dim() == 0 and many.dim() == 0
    assert mi_loss(torch.randn(4), torch.randn(4, 3), estimator).isfinite()


def test_the_criterion_weighs_the_terms_and_asks_only_for_weighted_ones():
    loss = DeepInfomaxLoss({"global": 0.5, "local": 0.0, "prior": 2.0, "local_local": 0.0})
    assert loss.active_terms == ("global", "prior")
    value = loss({"global": torch.tensor(1.0), "prior": torch.tensor(3.0)})
    assert value.item() == pytest.approx(6.5)


# -- prior forms ------------------------------------------------------------------------


def test_kl_mean_is_the_sum_over_code_dimensions_divided_by_their_number():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    assert torch.allclose(prior_kl(mu, logvar, "mean") * 7, prior_kl(mu, logvar, "sum"))


def test_adversarial_losses_on_a_confident_discriminator():
    sure = torch.full((4,), 20.0)
    d_loss, g_loss = adversarial_prior_losses(sure, -sure, -sure)
    assert d_loss.item() < 1e-6  # tells prior from codes
    assert g_loss.item() == pytest.approx(20.0, abs=1e-6)  # the encoder is caught
