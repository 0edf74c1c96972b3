"""skorch callbacks that decide when training stops (a time budget, Ctrl-C, early stopping)
and the history of an epoch cut short: unit tests on a fake clock and hand-built histories,
then the same behaviours through whole fits."""

import warnings

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from skorch.history import History
from torch import nn

import dimlearn.callbacks
from dimlearn import DeepInfomaxTransformer
from dimlearn.callbacks import (
    BestEpochEarlyStopping,
    CosineSchedule,
    StopAtBatchEnd,
    StopRequest,
    TimeBudget,
    finish_history,
)
from dimlearn.infomax import DeepInfomaxModule
from tests.conftest import small_images


class FakeClock:
    def __init__(self, monkeypatch):
        self.now = 100.0
        monkeypatch.setattr(dimlearn.callbacks, "clock", lambda: self.now)


class FakeNet:
    """What the callbacks read of a net: its history (and no process group)."""

    ranks = None

    def __init__(self):
        self.history = History()
        self.history.new_epoch()


def test_the_time_budget_stops_at_the_batch_that_spends_it(monkeypatch):
    clock, net, budget = FakeClock(monkeypatch), FakeNet(), TimeBudget(10.0)
    budget.on_train_begin(net)
    budget.on_epoch_begin(net)
    clock.now += 9.9
    budget.on_batch_end(net)  # 9.9 s: goes on
    clock.now += 0.1
    with pytest.raises(KeyboardInterrupt):  # skorch's way of stopping training
        budget.on_batch_end(net)
    assert net.history[-1, "stopped_by_time"] is True


def test_the_time_budget_stops_before_an_epoch_that_would_overrun(monkeypatch):
    clock, net, budget = FakeClock(monkeypatch), FakeNet(), TimeBudget(10.0)
    budget.on_train_begin(net)
    budget.on_epoch_begin(net)
    clock.now += 4.0
    budget.on_epoch_end(net)  # 4 s spent + 4 s predicted <= 10: another epoch
    budget.on_epoch_begin(net)
    clock.now += 4.0
    with pytest.raises(KeyboardInterrupt):  # 8 + 4 > 10
        budget.on_epoch_end(net)


class CountingRanks:
    """What the callbacks ask of the processes training together: whether any wants to
    stop. Counts the asks (each one an all-reduce in data-parallel training) and answers
    ``others`` for the other processes."""

    def __init__(self, others: bool = False):
        self.others = others
        self.asked = 0

    def any(self, flag: bool) -> bool:
        self.asked += 1
        return flag or self.others


def held_out_batch_stops(callback, net) -> bool:
    """Whether the callback stops training at the end of a held-out batch."""
    try:
        callback.on_batch_end(net, training=False)
    except KeyboardInterrupt:
        return True
    return False


def test_the_time_budget_spent_in_the_held_out_pass_stops_at_the_epoch_end(monkeypatch):
    clock, net, budget = FakeClock(monkeypatch), FakeNet(), TimeBudget(10.0)
    net.ranks = CountingRanks()
    budget.on_train_begin(net)
    budget.on_epoch_begin(net)
    clock.now += 9.0
    budget.on_batch_end(net, training=True)  # the last training batch: 9 s, goes on
    assert net.ranks.asked == 1
    clock.now += 2.0
    for _ in range(3):  # held-out batches at 11 s: the held-out pass is never cut ...
        if held_out_batch_stops(budget, net):
            pytest.fail("the time budget stopped training in the held-out pass")
    assert net.ranks.asked == 1  # ... nor costs an all-reduce per batch
    with pytest.raises(KeyboardInterrupt):  # the epoch is whole, valid_loss included
        budget.on_epoch_end(net)
    assert net.history[-1, "stopped_by_time"] is True


def test_a_stop_request_in_the_held_out_pass_stops_at_the_epoch_end():
    request, net = StopRequest(), FakeNet()
    net.ranks = CountingRanks()
    callback = StopAtBatchEnd(request)
    request.requested = True
    if held_out_batch_stops(callback, net):
        pytest.fail("a stop request stopped training in the held-out pass")
    assert net.ranks.asked == 0 and "interrupted" not in net.history[-1]
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch_end(net)
    assert net.history[-1, "interrupted"] is True


def test_early_stopping_stops_every_process_when_one_would():
    net = FakeNet()
    net.module_ = nn.Linear(2, 1)
    net.optimizer_ = torch.optim.Adam(net.module_.parameters())
    stopping = BestEpochEarlyStopping(patience=1, threshold=0.0, load_best=True)
    stopping.on_train_begin(net)
    net.history.record("epoch", 1)
    net.history.record("valid_loss", 1.0)
    net.ranks = CountingRanks(others=False)
    stopping.on_epoch_end(net)  # improved here and elsewhere: goes on
    assert net.ranks.asked == 1
    net.history.new_epoch()
    net.history.record("epoch", 2)
    net.history.record("valid_loss", 0.5)
    net.ranks = CountingRanks(others=True)  # improved here, but another process stops
    with pytest.raises(KeyboardInterrupt):
        stopping.on_epoch_end(net)
    assert stopping.best_epoch_ == 2  # this process still keeps its own best epoch


def test_a_stop_request_stops_at_the_end_of_the_batch():
    request, net = StopRequest(), FakeNet()
    callback = StopAtBatchEnd(request)
    callback.on_batch_end(net)
    request.requested = True
    with pytest.raises(KeyboardInterrupt):
        callback.on_batch_end(net)
    assert net.history[-1, "interrupted"] is True


def test_an_epoch_cut_short_gets_its_batch_weighted_means():
    history = History()
    history.new_epoch()
    history.record("epoch", 1)
    for size, loss, local in ((10, 1.0, 2.0), (5, 4.0, 8.0)):
        history.new_batch()
        history.record_batch("train_batch_size", size)
        history.record_batch("train_loss", loss)
        history.record_batch("train_local", local)
    cut = finish_history(history, planned_batches=4)
    assert cut == {"epoch": 1, "batches": 2, "planned": 4}
    assert history[-1, "train_loss"] == pytest.approx((10 * 1.0 + 5 * 4.0) / 15)
    assert history[-1, "train_local"] == pytest.approx((10 * 2.0 + 5 * 8.0) / 15)
    assert history[-1, "epoch_fraction"] == 0.5 and history[-1, "train_batch_count"] == 2


def test_an_epoch_without_a_finished_batch_is_dropped_and_a_whole_one_kept():
    history = History()
    history.new_epoch()
    history.record("train_loss", 1.0)
    assert finish_history(history, 3) is None and len(history) == 1
    history.new_epoch()
    assert finish_history(history, 3) == {"epoch": 2, "batches": 0, "planned": 3}
    assert len(history) == 1


# -- through whole fits -------------------------------------------------------------------


class BatchClock:
    """A fake ``dimlearn.callbacks.clock``: exactly 1.0 "second" passes per training batch
    (and per held-out batch with ``held_out=True``).

    It is advanced by the training step (``DeepInfomaxModule.terms`` in training mode, which
    ``DeepInfomaxNet.train_step_single`` calls once per batch; in eval mode for held-out
    batches), so a budget is counted in batches and does not depend on how busy the machine
    is.
    """

    def __init__(self, monkeypatch, held_out=False):
        self.now = 0.0
        self.train_batches = self.held_out_batches = 0
        original = DeepInfomaxModule.terms

        def terms(module, x, names, **step):  # step: the batch's part and generator
            if module.training:
                self.now += 1.0
                self.train_batches += 1
            elif held_out:
                self.now += 1.0
                self.held_out_batches += 1
            return original(module, x, names, **step)

        monkeypatch.setattr(DeepInfomaxModule, "terms", terms)
        monkeypatch.setattr(dimlearn.callbacks, "clock", self)

    def __call__(self) -> float:
        return self.now


def fit_on_the_batch_clock(monkeypatch, max_time, fast):
    # 30 samples in batches of 10: every epoch is exactly 3 batches, i.e. 3 fake seconds
    clock = BatchClock(monkeypatch)
    X = small_images(n=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        budget = dict(fast, max_epochs=100, batch_size=10, max_time=max_time)
        dim = DeepInfomaxTransformer(**budget).fit(X)
    # a stop by the budget is expected: it is not reported as an interruption
    assert not [w for w in caught if "interrupted" in str(w.message)]
    return dim, clock


def test_max_time_stops_before_an_epoch_that_would_overrun(monkeypatch, fast):
    # after epoch 1: 3 s spent + 3 s predicted = 6 <= 7.5, go on; after epoch 2: 6 + 3 > 7.5
    dim, clock = fit_on_the_batch_clock(monkeypatch, 7.5, fast)
    assert clock.train_batches == 6 and clock.now == 6.0
    assert dim.n_iter_ == 2 and len(dim.history_) == 2 and len(dim.loss_curve_) == 2
    assert dim.history_[-1]["stopped_by_time"] is True
    assert "stopped_by_time" not in dim.history_[0]
    for entry in dim.history_:  # whole epochs (skorch counts their batches itself)
        assert entry["train_batch_count"] == 3 and len(entry["batches"]) == 3
        assert "epoch_fraction" not in entry
    assert np.all(np.isfinite(dim.loss_curve_))


def test_max_time_cuts_an_epoch_longer_than_the_budget_at_a_batch_end(monkeypatch, fast):
    # batch 1 ends at 1 s < 1.5; batch 2 ends at 2 s >= 1.5: stop there, batch 3 never runs
    dim, clock = fit_on_the_batch_clock(monkeypatch, 1.5, fast)
    assert clock.train_batches == 2 and clock.now == 2.0
    assert dim.n_iter_ == 1 and len(dim.history_) == 1
    last = dim.history_[-1]
    assert last["stopped_by_time"] is True
    assert last["train_batch_count"] == 2 and len(last["batches"]) == 2
    assert last["epoch_fraction"] == pytest.approx(2 / 3, abs=1e-12)
    assert len(dim.loss_curve_) == 1 and np.isfinite(dim.loss_curve_[0])
    batch_losses = [batch["train_loss"] for batch in last["batches"]]
    # the cut epoch's loss is the mean of the batches that ran (both of 10 samples)
    assert dim.loss_curve_[0] == pytest.approx(np.mean(batch_losses), rel=1e-6)
    assert np.all(np.isfinite(dim.transform(small_images(n=4))))


def test_a_budget_spent_in_the_held_out_pass_keeps_the_epoch_and_its_valid_loss(monkeypatch, fast):
    # 40 rows: 30 to train on in 3 batches of 10, 10 held out in 1 batch; a second a batch.
    # The budget runs out during the held-out batch (3 s < 3.5 s <= 4 s): the epoch ends
    # whole, with the valid_loss that early stopping monitors, and training stops there
    clock = BatchClock(monkeypatch, held_out=True)
    params = dict(fast, max_epochs=100, batch_size=10, max_time=3.5, early_stopping=True)
    dim = DeepInfomaxTransformer(**params, validation_fraction=0.25).fit(small_images(n=40))
    assert (clock.train_batches, clock.held_out_batches) == (3, 1)
    assert dim.n_iter_ == 1 and len(dim.history_) == 1
    last = dim.history_[-1]
    assert last["stopped_by_time"] is True
    assert np.isfinite(last["valid_loss"]) and last["valid_batch_count"] == 1
    assert last["train_batch_count"] == 3 and "epoch_fraction" not in last


# -- the callbacks parameter: the user's callbacks beside dimlearn's ----------------------


class Recorder(Callback):
    """Records what a callback of the user's sees of the net."""

    def initialize(self):
        self.batches, self.epochs, self.ends = 0, [], 0
        return self

    def on_batch_end(self, net, training=True, **kwargs):
        self.batches += training

    def on_epoch_end(self, net, **kwargs):
        entry = net.history[-1]
        self.epochs.append((len(net.history), net.epochs_before, "train_loss" in entry))
        self.module = net.module_

    def on_train_end(self, net, **kwargs):
        self.ends += 1


def test_callbacks_of_the_users_run_with_the_net_and_the_history_of_their_call(fast):
    unnamed, named = Recorder(), Recorder()
    dim = DeepInfomaxTransformer(**fast, callbacks=[unnamed, ("mine", named)])
    dim.fit(small_images(n=20))
    for recorder in (unnamed, named):  # the instances themselves ran
        assert recorder.epochs == [(1, 0, True), (2, 0, True)] and recorder.ends == 1
    assert hasattr(unnamed.module, "encoder")  # the whole module
    dim.set_params(warm_start=True).fit(small_images(n=20))
    # initialised afresh for the call; its history starts at 1, after the 2 epochs before
    assert unnamed.epochs == [(1, 2, True), (2, 2, True)] and dim.n_iter_ == 4


def test_callbacks_see_every_batch_and_the_epoch_a_time_budget_stops_at(monkeypatch, fast):
    recorder = Recorder()
    BatchClock(monkeypatch)
    budget = dict(fast, max_epochs=100, batch_size=10, max_time=7.5, callbacks=[recorder])
    dim = DeepInfomaxTransformer(**budget).fit(small_images(n=30))  # as in the test above
    assert dim.n_iter_ == 2 and dim.history_[-1]["stopped_by_time"] is True
    assert recorder.batches == 6 and [e[0] for e in recorder.epochs] == [1, 2]


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        ([("early_stopping", Recorder())], "'early_stopping' is one of dimlearn's own"),
        ([("train_loss", Recorder())], "'train_loss' is one of dimlearn's own"),
        ([Recorder(), "progress_bar"], "neither a skorch callback"),
        ([print], "neither a skorch callback"),
    ],
)
def test_callbacks_that_would_replace_dimlearns_or_are_none_are_refused(fast, callbacks, message):
    dim = DeepInfomaxTransformer(**fast, callbacks=callbacks)
    with pytest.raises(ValueError, match=message):
        dim.fit(small_images(n=20))
    assert not hasattr(dim, "module_")


# -- learning-rate schedule and early stopping ------------------------------------------


def test_cosine_schedule_anneals_the_learning_rate(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**dict(fast, max_epochs=4), lr_schedule="cosine").fit(X[:64])
    lrs = list(dim.history_[:, "event_lr"])
    assert lrs[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_early_stopping_restores_the_whole_state_of_the_best_epoch(digit_images, fast):
    X, _ = digit_images
    common = dict(fast, early_stopping=True, validation_fraction=0.25)
    # nothing can beat the first epoch by 1e9, so training stops after 1 + 2 epochs and
    # the model is the state after epoch 1: weights, Adam's moments, history and n_iter_
    stopped = DeepInfomaxTransformer(
        **dict(common, max_epochs=10), tol=1e9, n_iter_no_change=2
    ).fit(X[:80])
    assert stopped.n_iter_ == 1 and len(stopped.history_) == 1 == len(stopped.loss_curve_)
    assert stopped.history_[-1, "epochs_after_best"] == 2
    assert np.isfinite(stopped.history_[-1, "valid_loss_after_best"]).all()
    one_epoch = DeepInfomaxTransformer(**dict(common, max_epochs=1)).fit(X[:80])
    np.testing.assert_array_equal(stopped.transform(X[100:120]), one_epoch.transform(X[100:120]))
    assert stopped._optimizer_state.keys() == one_epoch._optimizer_state.keys()
    for name, state in stopped._optimizer_state.items():
        for key, value in state.items():
            torch.testing.assert_close(value, one_epoch._optimizer_state[name][key], rtol=0, atol=0)


def test_early_stopping_holds_out_rows_it_does_not_train_on(digit_images, fast):
    X, _ = digit_images
    dim = DeepInfomaxTransformer(**fast, early_stopping=True, validation_fraction=0.25)
    dim.fit(X[:80])
    assert dim.history_[-1, "train_batch_count"] == 1  # 60 training rows, batch_size 128
    assert dim.history_[-1, "valid_batch_count"] == 1


def test_early_stopping_with_too_few_rows_is_refused(monkeypatch, fast):
    import dimlearn.training as training_module

    monkeypatch.setattr(training_module, "train_net", lambda *a, **k: 1 / 0)
    with pytest.raises(ValueError, match="validation_fraction=0.1 splits 10 samples"):
        X = np.random.default_rng(0).random((10, 8, 8))
        DeepInfomaxTransformer(**fast, early_stopping=True).fit(X)


class FakeOptimizerNet(FakeNet):
    batch_size = 10

    def __init__(self):
        super().__init__()
        self.optimizer_ = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)


class TenBatches:
    def batch_sizes(self, batch_size):
        return [10] * 10


def test_the_cosine_schedule_follows_the_time_budget(monkeypatch):
    clock, net = FakeClock(monkeypatch), FakeOptimizerNet()
    schedule = CosineSchedule(max_epochs=1000, max_time=60.0, warmup_steps=1)
    schedule.on_train_begin(net, X=TenBatches())
    rates = []
    for _ in range(7):  # a batch every 10 s: progress 0, 1/6, ..., 1
        schedule.on_batch_begin(net)
        rates.append(net.optimizer_.param_groups[0]["lr"])
        clock.now += 10.0
    expected = [0.01 * 0.5 * (1 + np.cos(np.pi * k / 6)) for k in range(7)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12, atol=1e-15)
    assert net.history[-1, "event_lr"] == pytest.approx(0.01)


def test_the_cosine_schedule_without_a_budget_follows_the_batches_after_a_warm_up():
    net = FakeOptimizerNet()
    schedule = CosineSchedule(max_epochs=2)  # 20 batches: a warm-up of 2
    schedule.on_train_begin(net, X=TenBatches())
    rates = []
    for _ in range(20):
        schedule.on_batch_begin(net)
        rates.append(net.optimizer_.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(0.005)  # half way up the warm-up, at progress 0
    assert rates[1] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi / 20)))
    assert all(a > b for a, b in zip(rates[1:], rates[2:], strict=False))
    assert rates[-1] < 0.01 * 0.01


def test_a_cosine_fit_under_a_budget_ends_near_zero(digit_images, fast, monkeypatch):
    clock = BatchClock(monkeypatch)
    X, _ = digit_images
    dim = DeepInfomaxTransformer(
        **dict(fast, max_epochs=100), batch_size=16, max_time=12.0, lr_schedule="cosine"
    ).fit(X[:64])
    assert clock.train_batches == 12  # 3 epochs of 4 batches, one fake second each
    # warming up over a tenth of the 100 epochs' 400 batches, at most 100 batches
    assert dim.history_[0, "event_lr"] == pytest.approx(1e-3 / 40)
    assert dim.history_[-1, "event_lr"] < 0.2e-3  # 3/4 of the way down the cosine
