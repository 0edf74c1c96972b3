"""Views of a batch drawn on its device: crops and flips, colour jitter, SCARF's corruption of
table rows, two views for AMDIM-style training; and two-view training itself."""

import numpy as np
import pytest
import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn.distributed import BatchPart
from dimlearn.views import (
    colour_jitter,
    corrupt_rows,
    default_view,
    image_view,
    random_crop_flip,
    row_view,
    two_views,
)


def test_random_crop_flip_shifts_and_mirrors_within_the_padding():
    torch.manual_seed(0)
    images = (
        torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16).repeat(64, 1, 1, 1)
    )
    out = random_crop_flip(images)
    assert out.shape == images.shape
    assert not torch.equal(out, images)  # 128 draws: some crop or flip happened
    # every output row is a (possibly mirrored) run of one padded input row
    centre = out[:, 0, 8, :]
    steps = (centre[:, 1:] - centre[:, :-1]).abs()
    assert ((steps == 1) | (steps == 0) | (steps == 2)).float().mean() > 0.95
    # mostly decreasing along the row: mirrored (reflected borders may turn a step or two)
    decreasing = (centre[:, 1:] < centre[:, :-1]).float().mean(dim=1)
    flipped = (decreasing > 0.5).float().mean()
    assert 0.3 < flipped < 0.7


def test_random_crop_without_flip_never_mirrors():
    images = (
        torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16).repeat(64, 1, 1, 1)
    )
    generator = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, generator, flip=False)
    assert not torch.equal(out, images)  # crops happened
    centre = out[:, 0, 8, 2:-2]  # away from the reflected borders: increasing runs only
    assert bool((centre[:, 1:] - centre[:, :-1] == 1).all())
    # and the crop offsets are the same draws as with flips (the flips are drawn after them)
    with_flips = random_crop_flip(images, torch.Generator().manual_seed(0), flip=True)
    same = (with_flips[:, 0, 8, 2:-2] == centre).all(dim=1)
    assert 0.3 < same.float().mean() < 0.7  # the unmirrored half


def test_colour_jitter_is_linear_per_image_and_greys_some():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(200, 3, 4, 4, generator=generator)
    out = colour_jitter(images, torch.Generator().manual_seed(1), grey=0.5)
    assert out.shape == images.shape and torch.isfinite(out).all()
    grey = (out - out.mean(dim=1, keepdim=True)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert 0.35 < grey.float().mean() < 0.65  # about half are grey
    # one channel: brightness and contrast only, an affine map of each image
    single = torch.randn(5, 1, 4, 4, generator=generator)
    jittered = colour_jitter(single, torch.Generator().manual_seed(2))
    for image, new in zip(single, jittered, strict=True):
        slope = np.polyfit(image.flatten().numpy(), new.flatten().numpy(), 1)[0]
        assert 0.6 - 1e-4 <= slope <= 1.4 + 1e-4
        residual = new - (slope * image + (new.mean() - slope * image.mean()))
        assert float(residual.abs().max()) < 1e-4


def test_corrupted_rows_keep_each_value_in_its_column():
    x = torch.arange(600.0).reshape(100, 6)
    view = corrupt_rows(x, torch.Generator().manual_seed(0))
    assert torch.equal(view % 6, x % 6)  # every value comes from its own feature
    replaced = (view != x).float().mean()
    assert 0.2 < replaced < 0.35  # about 30%, less the draws of a row's own value


def test_views_of_a_part_are_the_rows_of_the_whole_batch_s_views():
    images = torch.randn(10, 3, 8, 8)
    whole = two_views(images, "image", torch.Generator().manual_seed(3))
    part = BatchPart(10, rank=1, size=2, group=None)
    mine = two_views(images[part.rows], "image", torch.Generator().manual_seed(3), part)
    torch.testing.assert_close(mine, whole[:, part.rows], rtol=0, atol=0)


def test_two_view_training_fits_reproducibly_on_images_and_tables(digit_images, fast):
    X, _ = digit_images
    for data in (X[:80], X[:80].reshape(80, -1)):
        a = DeepInfomaxTransformer(**fast, views=2).fit(data)
        b = DeepInfomaxTransformer(**fast, views=2).fit(data)
        np.testing.assert_array_equal(a.transform(data), b.transform(data))
        assert np.isfinite(a.loss_curve_).all()
        one_view = DeepInfomaxTransformer(**fast, views=1).fit(data)
        assert not np.array_equal(a.transform(data), one_view.transform(data))


def test_two_views_with_held_out_rows_score_identical_views(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, views=2, early_stopping=True, validation_fraction=0.25)
    dim.fit(X[:80])
    assert np.isfinite(dim.history_[:, "valid_loss"]).all()


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_cosine_scores_stay_within_one_over_the_temperature(temperature):
    from dimlearn.critics import LocalDotCritic
    from dimlearn.infomax import contrast

    critic = LocalDotCritic((4, 3, 3), latent_dim=5, hidden=8, temperature=temperature)
    with torch.no_grad():
        pos, neg = contrast(critic, 100 * torch.randn(6, 4, 3, 3), 100 * torch.randn(6, 5), "all")
    assert float(torch.cat([pos.flatten(), neg.flatten()]).abs().max()) <= 1 / temperature + 1e-4


def test_temperature_needs_the_dot_critic(digit_images, fast):
    X, _ = digit_images
    with pytest.raises(ValueError, match="critic='dot'"):
        DeepInfomaxTransformer(**fast, temperature=0.1, critic="concat").fit(X[:20])


# -- the augmentation parameter ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "view"),
    [
        (dict(), image_view),  # two views of images
        (dict(views=1, augment=True), random_crop_flip),
        (dict(image_shape=None), row_view),  # two views of table rows
    ],
)
def test_dimlearns_own_augmentation_given_trains_as_none_does(digit_images, fast, params, view):
    X = digit_images[0][:48]
    if "image_shape" in params:
        X, params = X.reshape(48, -1), dict(views=2)
    default = DeepInfomaxTransformer(**fast, **params).fit(X)
    given = DeepInfomaxTransformer(**fast, **params, augmentation=view).fit(X)
    assert default_view(default.layout_.kind, default.views_) is view
    assert np.array_equal(given.transform(X), default.transform(X))


def test_an_augmentation_of_ones_own_draws_each_training_view(digit_images, fast):
    calls = []

    def shifted(batch, generator, part, flip):
        calls.append((tuple(batch.shape), type(generator), part, flip))
        return batch + torch.rand(batch.shape, generator=generator)

    X = digit_images[0][:48]
    params = dict(fast, batch_size=16, early_stopping=True, validation_fraction=0.25)
    dim = DeepInfomaxTransformer(**params, augmentation=shifted).fit(X)
    # 36 training rows: 3 batches of 12 per epoch, 2 views each; the held-out batch is not
    # augmented; grey images are not mirrored (flip="auto")
    assert calls == [((12, 1, 8, 8), torch.Generator, None, False)] * 12
    plain = DeepInfomaxTransformer(**params).fit(X)
    assert not np.array_equal(dim.transform(X), plain.transform(X))


def test_an_augmentation_where_nothing_is_augmented_is_refused_before_training(fast):
    dim = DeepInfomaxTransformer(**fast, views=1, augmentation=random_crop_flip)
    with pytest.raises(ValueError, match="one view without augment, which augments nothing"):
        dim.fit(np.random.default_rng(0).random((16, 8, 8)))
    assert not hasattr(dim, "module_")


def test_an_augmentation_that_changes_the_shape_is_named(fast):
    def cropped(batch, generator, part, flip):
        return batch[..., 1:, 1:]

    dim = DeepInfomaxTransformer(**fast, augmentation=cropped)
    with pytest.raises(ValueError, match=r"returned \(16, 1, 7, 7\) for a batch of shape"):
        dim.fit(np.random.default_rng(0).random((16, 8, 8)))
