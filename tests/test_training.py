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
