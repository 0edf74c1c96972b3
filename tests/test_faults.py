"""Faults during training: NaN losses, Ctrl-C, and continued training that does what it says;
and data bigger than memory (memory-mapped arrays are never copied whole)."""

import os
import pickle
import signal
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from dimlearn import DeepInfomaxTransformer, NonFiniteLossError
from dimlearn.infomax import DeepInfomaxModule

# -- non-finite losses --------------------------------------------------------------------


def test_a_huge_learning_rate_stops_the_first_fit_and_leaves_it_unfitted(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, max_epochs=3), lr=1e6)
    with pytest.raises(NonFiniteLossError, match=r"at epoch \d+, batch \d+ .*lower lr .*1e\+06"):
        dim.fit(X[:200])
    with pytest.raises(NotFittedError):
        check_is_fitted(dim)
    assert not [name for name in vars(dim) if name.endswith("_")]


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_a_diverging_continued_fit_leaves_the_estimator_exactly_as_it_was(
    digit_images, method, fast
):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, max_epochs=3), warm_start=True).fit(X[:200])
    before = pickle.dumps(dim)
    codes = dim.transform(X[:20])
    dim.set_params(lr=1e6)
    with pytest.raises(NonFiniteLossError):
        getattr(dim, method)(X[200:400])
    dim.set_params(lr=1e-3)
    assert pickle.dumps(dim) == before  # weights, Adam, history, RNG stream: all unchanged
    np.testing.assert_array_equal(dim.transform(X[:20]), codes)


def test_an_infinite_loss_is_caught_too(digit_images, monkeypatch, fast):
    X, _ = digit_images
    original = DeepInfomaxModule.terms

    def terms(self, x, names, **step):
        out = original(self, x, names, **step)
        out["local"] = out["local"] * float("inf")
        return out

    monkeypatch.setattr(DeepInfomaxModule, "terms", terms)
    with pytest.raises(NonFiniteLossError, match="became inf at epoch 1, batch 1"):
        DeepInfomaxTransformer(**dict(fast, max_epochs=3)).fit(X[:64])


# -- Ctrl-C -------------------------------------------------------------------------------


def send_sigint_at_batch(monkeypatch, batch: int):
    """From a helper thread, send this process a SIGINT during the given training batch
    (counted over the whole call), as a Ctrl-C in a terminal would."""
    calls = []
    original = DeepInfomaxModule.terms

    def terms(self, x, names, **step):  # step: the batch's part and generator
        calls.append(1)
        if len(calls) == batch:
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
            sender.start()
            sender.join()
            time.sleep(0.05)  # Python runs the handler in the main thread, about now
        return original(self, x, names, **step)

    monkeypatch.setattr(DeepInfomaxModule, "terms", terms)
    return calls


@pytest.mark.parametrize(
    "batch, epochs, done, where",
    [(1, 1, 1, "in epoch 1, after batch 1 of 4"), (6, 2, 2, "in epoch 2, after batch 2 of 4")],
)
def test_ctrl_c_returns_the_model_trained_so_far(
    digit_images, monkeypatch, batch, epochs, done, where, fast
):
    X, _ = digit_images
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    calls = send_sigint_at_batch(monkeypatch, batch)
    dim = DeepInfomaxTransformer(
        **dict(fast, max_epochs=3), batch_size=16
    )  # 64 rows: 4 batches an epoch
    with pytest.warns(UserWarning, match=rf"interrupted \(Ctrl-C\) {where}"):
        dim.fit(X[:64])
    assert len(calls) == batch  # stopped at the end of the batch the signal came in
    assert dim.n_iter_ == epochs == len(dim.history_) == len(dim.loss_curve_)
    assert dim.history_[-1, "train_batch_count"] == done
    assert dim.history_[-1, "epoch_fraction"] == done / 4
    assert dim.history_[-1, "interrupted"]
    assert np.isfinite(dim.loss_curve_).all()
    assert np.isfinite(dim.transform(X[:10])).all()
    fresh = DeepInfomaxTransformer(**dict(fast, batch_size=16, max_epochs=1))
    assert not np.array_equal(dim.transform(X[:10]), fresh.fit(X[:64]).transform(X[:10]))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    dim.set_params(warm_start=True).fit(X[:64])  # and training goes on from there
    assert dim.n_iter_ == epochs + 3


def test_an_interrupt_inside_a_batch_drops_only_that_batch(digit_images, monkeypatch, fast):
    # a KeyboardInterrupt raised in the middle of a step (a second Ctrl-C, or a custom
    # SIGINT handler): skorch ends training there; the batch that did not finish is not
    # counted
    X, _ = digit_images
    calls = []
    original = DeepInfomaxModule.terms

    def terms(self, x, names, **step):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(self, x, names, **step)

    monkeypatch.setattr(DeepInfomaxModule, "terms", terms)
    dim = DeepInfomaxTransformer(**dict(fast, max_epochs=3), batch_size=16)
    with pytest.warns(UserWarning, match="in epoch 2, after batch 1 of 4"):
        dim.fit(X[:64])
    assert dim.n_iter_ == 2 and dim.history_[-1, "train_batch_count"] == 1
    assert np.isfinite(dim.loss_curve_).all()


# -- continued training uses the current lr ------------------------------------------------


def encoder_change(before: dict, module) -> float:
    """Largest change of an encoder weight (parameters only: BatchNorm's running
    statistics move without any learning rate)."""
    after = dict(module.encoder.named_parameters())
    return max(float((after[k].detach() - before[k]).abs().max()) for k in before)


def snapshot(dim) -> dict:
    return {k: v.detach().clone() for k, v in dim.module_.encoder.named_parameters()}


def test_warm_start_after_a_cosine_schedule_trains_at_lr_again(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, max_epochs=2), lr_schedule="cosine", warm_start=True)
    dim.fit(X[:128])
    before = snapshot(dim)
    dim.fit(X[:128])
    assert dim.history_[2, "event_lr"] == pytest.approx(1e-3)  # the schedule starts anew
    assert encoder_change(before, dim.module_) > 1e-4


def test_partial_fit_with_a_cosine_schedule_keeps_moving_the_weights(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, max_epochs=3), lr_schedule="cosine").partial_fit(
        X[:128]
    )
    before = snapshot(dim)
    dim.partial_fit(X[128:256])
    assert encoder_change(before, dim.module_) > 1e-4


def test_set_params_lr_between_calls_is_used(digit_images, fast):
    X, _ = digit_images
    changes = {}
    for lr in (1e-7, 1e-2):
        dim = DeepInfomaxTransformer(**dict(fast, max_epochs=3), warm_start=True).fit(X[:128])
        steps_before = {k: int(v["step"]) for k, v in dim._optimizer_state.items()}
        before = snapshot(dim)
        dim.set_params(lr=lr).fit(X[:128])
        changes[lr] = encoder_change(before, dim.module_)
        # Adam's moments carried on: its step count went on from the first fit's
        assert all(int(v["step"]) > steps_before[k] for k, v in dim._optimizer_state.items())
    assert changes[1e-2] > 1000 * changes[1e-7]


def test_the_training_rng_stream_is_state_not_a_seed_rederived_from_n_iter(digit_images, fast):
    # each training call draws its seed from random_state_, which goes on from call to call
    # (as scikit-learn's BernoulliRBM keeps random_state_)
    X, _ = digit_images
    stream = np.random.RandomState(0)
    dim = DeepInfomaxTransformer(**dict(fast, max_epochs=3), warm_start=True)
    for call in (dim.fit, dim.fit, dim.partial_fit):
        call(X[:64])
        stream.randint(np.iinfo(np.int32).max)
        np.testing.assert_array_equal(dim.random_state_.get_state()[1], stream.get_state()[1])
    assert dim.random_state_.get_state()[2] == stream.get_state()[2]


# -- data bigger than memory ---------------------------------------------------------------


@pytest.fixture(scope="module")
def memmapped(tmp_path_factory):
    """40,000 uint8 16x16x3 images (31 MB) in a .npy opened with mmap_mode="r"."""
    path = tmp_path_factory.mktemp("memmap") / "images.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(40_000, 16, 16, 3))
    rng = np.random.default_rng(0)
    for start in range(0, len(out), 5000):
        out[start : start + 5000] = rng.integers(0, 256, size=(5000, 16, 16, 3), dtype=np.uint8)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def peak_numpy_bytes(call) -> int:
    """Peak memory that numpy allocated during call() (numpy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("early_stopping", [False, True])
def test_memory_mapped_data_is_never_copied_whole(memmapped, early_stopping):
    X = memmapped
    budget = 0.15 * X.nbytes  # a whole copy (or a float copy of 15% of it) would not fit
    params = dict(width=2, latent_dim=4, max_epochs=1, max_time=0.5, random_state=0)
    dim = DeepInfomaxTransformer(**params, early_stopping=early_stopping, device="cpu")
    peaks = {"fit": peak_numpy_bytes(lambda: dim.fit(X))}
    peaks["partial_fit"] = peak_numpy_bytes(lambda: dim.partial_fit(X))
    peaks["transform"] = peak_numpy_bytes(lambda: dim.transform(X)) - len(X) * 4 * 4  # output
    peaks["score"] = peak_numpy_bytes(lambda: dim.score(X[:2000]))
    assert all(peak < budget for peak in peaks.values()), (peaks, X.nbytes)
    assert isinstance(X, np.memmap) and not X.flags.writeable  # untouched


def test_a_copy_of_the_data_would_be_seen(memmapped):
    # the measurement above can fail: an in-memory copy of the array shows up in it
    assert peak_numpy_bytes(lambda: np.array(memmapped)) >= memmapped.nbytes
    assert torch.from_numpy(np.zeros(3)).numel() == 3
