"""The accelerator options, exercised on the CPU: mixed precision, a resident training set,
compilation, the device copy kept for inference, and seeding that leaves CUDA alone."""

import pickle

import numpy as np
import pytest
import torch

from dimlearn import DeepInfomaxTransformer


def test_bfloat16_autocast_trains_with_finite_losses(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, device="cpu", precision="bfloat16")).fit(X[:128])
    assert np.isfinite(dim.loss_curve_).all() and dim.loss_curve_[-1] < dim.loss_curve_[0]
    codes = dim.transform(X[:10])
    assert codes.dtype == np.float32 and np.isfinite(codes).all()
    full = DeepInfomaxTransformer(**dict(fast, device="cpu")).fit(X[:128])
    assert not np.array_equal(codes, full.transform(X[:10]))  # it did compute differently


def test_float16_without_cuda_is_refused_before_training(digit_images, fast):
    X, _ = digit_images
    with pytest.raises(ValueError, match="float16' needs a CUDA device"):
        DeepInfomaxTransformer(**dict(fast, device="cpu", precision="float16")).fit(X[:64])


def test_a_resident_training_set_gives_the_same_model_bit_for_bit(digit_images, fast):
    X, _ = digit_images
    images = (X[:96] * 15).astype(np.uint8)
    resident = DeepInfomaxTransformer(
        **dict(fast, device="cpu"), data_on_device=True, augment=True, views=1
    ).fit(images)
    streamed = DeepInfomaxTransformer(
        **dict(fast, device="cpu"), data_on_device=False, augment=True, views=1
    ).fit(images)
    np.testing.assert_array_equal(resident.transform(images), streamed.transform(images))
    assert resident.loss_curve_ == streamed.loss_curve_


def test_auto_keeps_data_on_the_host_on_the_cpu(digit_images, monkeypatch, fast):
    from dimlearn import inputs

    seen = []
    original = inputs.ShuffledBatches.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("resident_on"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(inputs.ShuffledBatches, "__init__", spy)
    DeepInfomaxTransformer(**dict(fast, device="cpu")).fit(digit_images[0][:64])
    assert seen == [None]


@pytest.mark.slow
def test_compile_trains_a_tiny_model_and_keeps_the_plain_module(digit_images, tmp_path, fast):
    pytest.importorskip("torch._inductor")
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, device="cpu", max_epochs=1), compile=True).fit(X[:64])
    assert not hasattr(dim.module_, "_orig_mod")  # the fitted module is the plain one
    assert all("_orig_mod" not in name for name in dim.module_.state_dict())
    assert np.isfinite(dim.loss_curve_).all()
    from dimlearn import load, save

    np.testing.assert_array_equal(
        load(save(dim, tmp_path / "m.safetensors")).transform(X[:5]), dim.transform(X[:5])
    )


def test_the_device_copy_for_inference_is_kept_but_never_pickled(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, device="cpu")).fit(X[:64])
    assert dim._module_on(torch.device("cpu")) is dim.module_  # the CPU needs no copy
    dim._device_copy = (torch.device("meta"), dim.module_, object())
    assert "_device_copy" not in pickle.loads(pickle.dumps(dim)).__dict__
    assert dim._module_on(torch.device("meta")) is dim._device_copy[2]  # reused


def test_fitting_on_the_cpu_leaves_cuda_generators_alone(digit_images, monkeypatch, fast):
    def refuse(*args, **kwargs):
        raise AssertionError("a CPU fit seeded a CUDA generator")

    monkeypatch.setattr(torch.cuda, "manual_seed", refuse)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    DeepInfomaxTransformer(**dict(fast, device="cpu")).fit(digit_images[0][:64])


def test_training_draws_only_from_generators_it_owns(digit_images, fast):
    # no fork-and-restore around training any more: if a draw came from the global RNG,
    # its state would have moved
    X, _ = digit_images
    params = dict(
        dict(fast, device="cpu"),
        augment=True,
        views=1,
        negatives="shuffle",
        prior="adversarial",
        alpha=0.5,
    )
    torch.manual_seed(123)
    state = torch.get_rng_state()
    DeepInfomaxTransformer(**params, early_stopping=True).fit(X[:96])
    assert torch.equal(torch.get_rng_state(), state)


def test_fits_in_threads_give_the_sequential_results(digit_images, fast):
    import threading

    X, _ = digit_images
    expected = (
        DeepInfomaxTransformer(**dict(fast, device="cpu"), augment=True, views=1)
        .fit(X[:96])
        .transform(X[:10])
    )
    results = [None, None]

    def fit(slot):
        dim = DeepInfomaxTransformer(**dict(fast, device="cpu"), augment=True, views=1).fit(X[:96])
        results[slot] = dim.transform(X[:10])

    threads = [threading.Thread(target=fit, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for codes in results:
        np.testing.assert_array_equal(codes, expected)
