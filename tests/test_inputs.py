import numpy as np
import pytest
import torch

from dimlearn.inputs import (
    ArrayBatches,
    ShuffledBatches,
    channel_stats,
    even_sizes,
    resolve_layout,
    split_batches,
)


@pytest.mark.parametrize(
    ("sample_shape", "image_shape", "layout", "expected"),
    [
        ((28, 28), None, "auto", ((28, 28, 1), True)),
        ((32, 32, 3), None, "auto", ((32, 32, 3), True)),
        ((3, 32, 32), None, "auto", ((3, 32, 32), False)),
        ((64,), (8, 8), "auto", ((8, 8, 1), True)),
        ((3072,), (32, 32, 3), "auto", ((32, 32, 3), True)),
        ((3072,), (3, 32, 32), "auto", ((3, 32, 32), False)),
        ((4, 4 * 9 * 3), None, "auto", None),  # not reached: 2-D samples are grey images
    ][:-1],
)
def test_layouts_are_read(sample_shape, image_shape, layout, expected):
    got = resolve_layout(sample_shape, image_shape, layout)
    assert got.kind == "image"
    assert (got.image_shape, got.channels_last) == expected


def test_flat_rows_without_image_shape_are_tabular():
    layout = resolve_layout((10,), None, "auto")
    assert layout.kind == "tabular" and layout.channels == 10


def test_ambiguous_layout_is_refused_not_guessed():
    with pytest.raises(ValueError, match="image_layout='channels_last'"):
        resolve_layout((3, 16, 3), None, "auto")
    with pytest.raises(ValueError, match="Cannot tell"):
        resolve_layout((16, 16, 16), None, "auto")
    got = resolve_layout((16, 16, 16), None, "channels_first")
    assert got.channels == 16 and not got.channels_last


def test_image_shape_must_match_the_features():
    with pytest.raises(ValueError, match="holds 64 values but each sample of X has 65"):
        resolve_layout((65,), (8, 8), "auto")
    with pytest.raises(ValueError, match="leave image_shape=None"):
        resolve_layout((8, 8), (4, 16), "auto")


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="too small for the conv encoder"):
        resolve_layout((7, 7), None, "auto")


def test_channel_stats_match_numpy_and_work_in_chunks(monkeypatch):
    monkeypatch.setattr("dimlearn.inputs._STATS_CHUNK_VALUES", 7 * 8 * 8 * 3)  # 7 images a chunk
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(30, 8, 8, 3)).astype(np.uint8)
    layout = resolve_layout(X.shape[1:], None, "auto")
    mean, std = channel_stats(X, layout)
    np.testing.assert_allclose(mean, X.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, X.std(axis=(0, 1, 2)), rtol=1e-10)


def test_constant_channel_gets_unit_scale():
    X = np.ones((5, 3))
    _, std = channel_stats(X, resolve_layout((3,), None, "auto"))
    assert (std == 1.0).all()


def test_batches_are_standardised_channels_first_float32():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(40, 8, 8, 3)).astype(np.uint8)
    layout = resolve_layout(X.shape[1:], None, "auto")
    data = ArrayBatches(X, layout, *channel_stats(X, layout))
    batch = data.take(np.arange(40))
    assert batch.dtype == torch.float32 and batch.shape == (40, 3, 8, 8)
    np.testing.assert_allclose(batch.mean(dim=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(batch.std(dim=(0, 2, 3), unbiased=False), 1, atol=1e-4)
    # channels-first input of the same pictures gives the same batch
    Xc = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    layout_c = resolve_layout(Xc.shape[1:], None, "auto")
    data_c = ArrayBatches(Xc, layout_c, *channel_stats(Xc, layout_c))
    torch.testing.assert_close(data_c.take(slice(0, 40)), batch)


def test_readonly_input_gives_no_warning(recwarn):
    X = np.arange(32 * 64, dtype=np.float32).reshape(32, 64)
    X.setflags(write=False)
    layout = resolve_layout((64,), (8, 8), "auto")
    ArrayBatches(X, layout, *channel_stats(X, layout)).take(slice(0, 4))
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_batches_travel_in_their_stored_dtype_and_are_standardised_where_they_land():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    layout = resolve_layout(X.shape[1:], None, "auto")
    mean, std = channel_stats(X, layout)
    data = ArrayBatches(X, layout, mean, std)
    raw = data.raw(np.array([1, 4, 5]))
    assert raw.dtype == torch.uint8 and raw.shape == (3, 8, 8, 3)  # a quarter of float32
    # the device-side path gives, bit for bit, the host-side float32 formula
    expected = (X[[1, 4, 5]].astype(np.float32) - mean.astype(np.float32)) * (1.0 / std).astype(
        np.float32
    )
    np.testing.assert_array_equal(data.prepare(raw).numpy(), expected.transpose(0, 3, 1, 2))
    assert data.prepare(raw).dtype == torch.float32
    floats = ArrayBatches(X.astype(np.float64), layout, mean, std)
    assert floats.raw(slice(0, 2)).dtype == torch.float32  # float64 halves on the host
    np.testing.assert_array_equal(floats.take(slice(0, 5)).numpy(), data.take(slice(0, 5)).numpy())


# -- batches -----------------------------------------------------------------------------


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


def test_channel_stats_pairs_with_batches(digits):
    X, _ = digits
    layout = resolve_layout((64,), (8, 8), "auto")
    data = ArrayBatches(X, layout, *channel_stats(X, layout))
    assert data.take(np.array([0, 1])).shape == (2, 1, 8, 8)


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


def test_the_dataset_owns_its_batch_plan_and_its_size_in_bytes():
    X = np.zeros((10, 8, 8, 3), dtype=np.uint8)
    layout = resolve_layout(X.shape[1:], None, "auto")
    data = ArrayBatches(X, layout, np.zeros(3), np.ones(3), rows=np.arange(7))
    assert data.batch_sizes(3) == split_batches(7, 3) == [3, 2, 2]
    assert data.nbytes == 7 * 8 * 8 * 3
    as_float = ArrayBatches(X.astype(np.float64), layout, np.zeros(3), np.ones(3))
    assert as_float.nbytes == 10 * 8 * 8 * 3 * 4  # batches travel as float32


def test_even_sizes_are_the_pieces_of_batches_and_of_process_parts():
    assert even_sizes(10, 3) == [4, 3, 3] and sum(even_sizes(1000, 7)) == 1000
    assert split_batches(10, 4) == even_sizes(10, 3)


@pytest.mark.parametrize("total", [0, 1, 2, 7, 10, 128, 1001])
@pytest.mark.parametrize("parts", [1, 2, 3, 8, 64])
def test_even_sizes_are_numpys_array_split(total, parts):
    pieces = np.array_split(np.arange(total), parts)
    assert even_sizes(total, parts) == [len(piece) for piece in pieces]
