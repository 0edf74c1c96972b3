import numpy as np
import pytest
import torch

from dimlearn.inputs import (
    ArrayBatches,
    ShuffledBatches,
    channel_stats,
    resolve_layout,
    split_batches,
)
from dimlearn.training import DeepInfomaxLoss


@pytest.mark.parametrize("n", range(2, 60))
@pytest.mark.parametrize("batch_size", [2, 3, 7, 16])
def test_batches_cover_every_sample_and_none_is_of_one(n, batch_size):
    sizes = split_batches(n, batch_size)
    assert sum(sizes) == n
    assert min(sizes) >= 2
    assert max(sizes) - min(sizes) <= 1
    assert len(sizes) == min(-(-n // batch_size), n // 2)


def test_shuffled_batches_visit_each_sample_once_per_epoch():
    X = np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    layout = resolve_layout((3,), None, "auto")
    data = ArrayBatches(X, layout, np.zeros(3), np.ones(3))
    torch.manual_seed(0)
    batches = ShuffledBatches(data, batch_size=5)
    seen_epochs = []
    for _ in range(2):
        epoch = list(batches)
        assert all(yb is None for _, yb in epoch)
        seen = np.concatenate([xb[:, 0].numpy() for xb, _ in epoch])
        assert sorted(seen.tolist()) == list(range(23))
        seen_epochs.append(seen)
    assert len(batches) == 5
    # shuffled: the batches differ between epochs
    assert not np.array_equal(seen_epochs[0], seen_epochs[1])


def test_loss_weights_terms_and_skips_zero_weights():
    loss = DeepInfomaxLoss(alpha=0.5, beta=0.0, gamma=2.0)
    assert loss.active_terms == ("global", "prior")
    value = loss({"global": torch.tensor(1.0), "prior": torch.tensor(3.0)})
    assert value.item() == pytest.approx(6.5)


def test_channel_stats_pairs_with_batches(digits):
    X, _ = digits
    layout = resolve_layout((64,), (8, 8), "auto")
    data = ArrayBatches(X, layout, *channel_stats(X, layout))
    assert data.take(np.array([0, 1])).shape == (2, 1, 8, 8)


def test_the_training_step_goes_through_forward_with_raw_uint8_batches(monkeypatch):
    # torch.compile and data-parallel wrappers wrap forward: the step must call the module
    from dimlearn import DeepInfomaxTransformer
    from dimlearn.infomax import DeepInfomaxModule
    from dimlearn.training import DeepInfomaxNet

    calls, raw_dtypes = [], []
    original_forward = DeepInfomaxModule.forward
    original_input = DeepInfomaxNet.model_input

    def forward(self, x, names):
        calls.append(tuple(names))
        return original_forward(self, x, names)

    def model_input(self, raw, training, part=None):
        raw_dtypes.append(raw.dtype)
        return original_input(self, raw, training, part)

    monkeypatch.setattr(DeepInfomaxModule, "forward", forward)
    monkeypatch.setattr(DeepInfomaxNet, "model_input", model_input)
    X = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=4, batch_size=20).fit(X)
    assert calls == [("local", "prior")] * 2
    assert raw_dtypes == [torch.uint8] * 2


def test_forward_returns_the_loss_terms():
    from dimlearn.infomax import DeepInfomaxModule
    from dimlearn.networks import ConvEncoder

    module = DeepInfomaxModule(ConvEncoder(1, 8, 8, 4, 4), latent_dim=4, critic_hidden=8).eval()
    x = torch.randn(6, 1, 8, 8)
    torch.manual_seed(0)
    by_call = module(x, ("global", "local", "prior"))
    torch.manual_seed(0)
    by_terms = module.terms(x, ("global", "local", "prior"))
    assert by_call.keys() == by_terms.keys()
    assert all(torch.equal(by_call[k], by_terms[k]) for k in by_call)


def test_prefetching_reads_the_same_batches_in_the_same_order():
    X = np.random.default_rng(0).integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    layout = resolve_layout(X.shape[1:], None, "auto")
    data = ArrayBatches(X, layout, *channel_stats(X, layout))

    def epoch(prefetch):
        generator = torch.Generator().manual_seed(3)
        batches = ShuffledBatches(data, 8, generator=generator, prefetch=prefetch)
        return [batch for batch, _ in batches]

    plain, ahead = epoch(False), epoch(True)
    assert len(plain) == len(ahead) == 7
    assert all(torch.equal(a, b) for a, b in zip(plain, ahead, strict=True))
