"""Data-parallel training (torchrun + DistributedDataParallel, gloo on loopback) equals one
process on the whole batch: per-epoch losses, final weights, the fitted estimator.

The 2-process run is launched once per module (``tests/ddp_worker.py`` under torchrun, all
addresses 127.0.0.1) and its results compared with fits in this process with the same
parameters and ``random_state``, so the same initial weights and the same global batches.

What may differ is the order of float32 sums (gathered parts, each process's threads), so
the tolerances come from ``tests/conftest.py``'s bounds on that and nothing else; the same
bounds hold between one process at 1 and at 2 threads (tested below). The encoder has no
bias before a BatchNorm layer: such a bias has no true gradient, and Adam made steps of
about ``lr`` out of its float noise, so it and the running mean after it once differed
between any two summation orders by far more than these bounds.
"""

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import dimlearn
from dimlearn import DeepInfomaxTransformer
from dimlearn.distributed import BatchPart, Ranks, synchronised_batch_norm, training_ranks
from dimlearn.inputs import ArrayBatches, ShuffledBatches, resolve_layout, split_batches
from dimlearn.networks import batch_norm_pairs, split_pairs
from tests.conftest import SUM_ROUNDING, weight_tolerance

WORKER = Path(__file__).with_name("ddp_worker.py")
EXAMPLE = Path(__file__).parents[1] / "examples" / "distributed_fit.py"

IMAGES = dict(
    width=4,
    latent_dim=8,
    batch_size=21,  # 81 training rows: batches of 21, 20, 20, 20; parts of 11 + 10 rows
    early_stopping=True,
    augment=True,
    views=1,
    precision="float32",  # the tolerances are derived for float32 sums
    alpha=0.5,
    beta=1.0,
    gamma=0.1,
    delta=0.5,
    prior="adversarial",
    negatives="all",
    mi_estimator="dv",
    max_epochs=3,
    random_state=0,
    device="cpu",
)
TABULAR = dict(
    width=4,
    latent_dim=8,
    batch_size=16,
    negatives="shuffle",
    critic="concat",
    mi_estimator="jsd",
    prior="kl",
    alpha=0.3,
    gamma=0.05,
    lr_schedule="cosine",
    precision="float32",
    max_epochs=3,
    random_state=0,
    device="cpu",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: Path, *args: str) -> str:
    """Run ``script`` on 2 processes with torchrun, on 127.0.0.1 only; its output. A failed
    launch is tried once more on a new port (a free port can be taken between choosing it
    and torchrun binding it); a real failure fails twice and its output is shown."""
    outputs = []
    for _ in range(2):
        returncode, output = _launch(script, *args)
        if returncode == 0:
            return output
        outputs.append(output[-3000:])
    raise AssertionError("\n---- second try ----\n".join(outputs))


def _launch(script: Path, *args: str) -> tuple[int, str]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    env["GLOO_SOCKET_IFNAME"] = "lo0" if sys.platform == "darwin" else "lo"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        str(script),
        *args,
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers
    return process.returncode, output


def _fit_here(case: dict) -> DeepInfomaxTransformer:
    X = np.load(case["data"])
    est = DeepInfomaxTransformer(**case["params"]).fit(X)
    if case.get("partial_fit"):
        est.partial_fit(X)
    return est


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Launch the worker on 2 processes once; yield {case: (one process, rank 0)}."""
    tmp = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    np.save(tmp / "images.npy", rng.integers(0, 256, size=(90, 8, 8, 3), dtype=np.uint8))
    np.save(tmp / "tabular.npy", rng.normal(size=(64, 10)).astype(np.float32))
    cases = {
        "images": {"data": str(tmp / "images.npy"), "params": IMAGES, "partial_fit": True},
        "tabular": {"data": str(tmp / "tabular.npy"), "params": TABULAR},
        "two_views": {
            "data": str(tmp / "images.npy"),
            "params": dict(IMAGES, views=2, temperature=0.2, mi_estimator="infonce"),
        },
        "two_views_tabular": {
            "data": str(tmp / "tabular.npy"),
            "params": dict(TABULAR, views=2),
        },
        "unsynced": {
            "data": str(tmp / "images.npy"),
            "params": IMAGES,
            "partial_fit": True,
            "unsynced_batch_norm": True,
        },
    }
    (tmp / "cases.json").write_text(json.dumps(cases))
    _torchrun(WORKER, str(tmp / "cases.json"), str(tmp))
    torch.set_num_threads(1)  # as each worker
    results = {}
    for name, case in cases.items():
        ranks = [(tmp / f"{name}.rank{r}.txt").read_text() for r in range(2)]
        other = pickle.loads((tmp / f"{name}.pkl").read_bytes())
        results[name] = (_fit_here(case), other, ranks, tmp / f"{name}.safetensors")
    yield results


def _history(est, key):
    return np.array([entry[key] for entry in est.history_ if key in entry], dtype=float)


LOSS_KEYS = ["train_loss", "train_global", "train_local", "train_prior", "train_local_local"]


def _steps(est) -> int:
    return sum(len(entry["batches"]) for entry in est.history_)


def assert_same_training(one, two):
    """Per-epoch losses within the rounding of one sum of the loss (relative), weights and
    BatchNorm statistics within :func:`~tests.conftest.weight_tolerance` of the steps run."""
    assert len(one.history_) == len(two.history_) == one.n_iter_ == two.n_iter_
    keys = [k for k in LOSS_KEYS + ["valid_loss"] if k in one.history_[0]]
    assert "train_loss" in keys
    for key in keys:
        np.testing.assert_allclose(_history(two, key), _history(one, key), rtol=SUM_ROUNDING)
    one_state, two_state = one.module_.state_dict(), two.module_.state_dict()
    assert one_state.keys() == two_state.keys()
    tolerance = weight_tolerance(_steps(one), one.lr)
    for name, value in one_state.items():
        difference = float((two_state[name].double() - value.double()).abs().max())
        assert difference <= tolerance, (name, difference, tolerance)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("case", ["images", "tabular", "two_views", "two_views_tabular"])
def test_two_processes_match_one_per_epoch_and_in_the_weights(two_process_run, case):
    one, two, ranks, _ = two_process_run[case]
    assert_same_training(one, two)
    assert ranks[0] == ranks[1]  # every process ends with the same history


def test_the_tolerances_hold_between_one_and_two_threads(tmp_path):
    """The bounds are about summation order, not about one processor: they hold as well
    between one process at 1 thread and at 2 threads (convolutions and reductions then
    split their sums differently), on the images case."""
    X = np.random.default_rng(0).integers(0, 256, size=(90, 8, 8, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    fits = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            fits.append(DeepInfomaxTransformer(**IMAGES).fit(X).partial_fit(X))
    finally:
        torch.set_num_threads(threads)
    assert_same_training(*fits)


def test_the_encoder_has_no_bias_before_a_batch_norm_layer(digit_images):
    X, _ = digit_images
    for data in (X[:40], X[:40].reshape(40, -1)):  # the conv and the MLP encoders
        module = DeepInfomaxTransformer(max_epochs=1, width=4).fit(data).module_
        pairs = list(batch_norm_pairs(module))
        assert pairs
        assert all(module.get_submodule(layer).bias is None for layer, _ in pairs)


@pytest.mark.distributed
@pytest.mark.slow
def test_the_example_trains_on_two_processes_and_only_rank_zero_writes(tmp_path):
    out = tmp_path / "dim.safetensors"
    output = _torchrun(EXAMPLE, "--quick", "--out", str(out))
    printed = [line for line in output.splitlines() if line.startswith(("fitted", "model"))]
    assert printed == [
        printed[0],
        f"model written to {out}",
    ], output[-3000:]
    assert "by 2 process(es)" in printed[0]
    model = dimlearn.load(out)
    X = load_digits().images
    one = DeepInfomaxTransformer(batch_size=128, random_state=0, max_epochs=2, width=8).fit(X)
    np.testing.assert_allclose(model.loss_curve_, one.loss_curve_, rtol=SUM_ROUNDING)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dim.safetensors"]


@pytest.mark.distributed
@pytest.mark.slow
def test_the_comparison_detects_batch_norm_statistics_of_one_process(two_process_run):
    """The control: BatchNorm on each process's rows alone (what plain DDP does) is what
    the test above must not let through."""
    one, unsynced, _, _ = two_process_run["unsynced"]
    gap = np.abs(_history(unsynced, "train_loss") / _history(one, "train_loss") - 1)
    assert gap.max() > 5 * SUM_ROUNDING
    state = unsynced.module_.state_dict()
    worst = max(float((state[n] - v).abs().max()) for n, v in one.module_.state_dict().items())
    assert worst > 10 * weight_tolerance(_steps(one), one.lr)
    with pytest.raises(AssertionError):
        assert_same_training(one, unsynced)


@pytest.mark.distributed
@pytest.mark.slow
def test_rank_zero_holds_an_ordinary_estimator(two_process_run):
    one, two, _, path = two_process_run["images"]
    assert type(two) is DeepInfomaxTransformer
    modules = list(two.module_.modules())
    assert not any(
        isinstance(m, (nn.SyncBatchNorm, nn.parallel.DistributedDataParallel)) for m in modules
    )
    assert all(p.requires_grad for p in two.module_.parameters())
    assert two.module_.part is None and two.module_.generator is None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    X = np.load(two_process_run["images"][3].with_name("images.npy"))
    codes = two.transform(X)  # on this process's CPU, no process group
    # the same networks, their weights within the bound of assert_same_training
    expected = one.transform(X)
    np.testing.assert_allclose(codes, expected, atol=SUM_ROUNDING * np.abs(expected).max())
    loaded = dimlearn.load(path)
    np.testing.assert_array_equal(loaded.transform(X), codes)
    again = pickle.loads(pickle.dumps(two)).set_params(warm_start=True, max_epochs=1).fit(X)
    assert again.n_iter_ == two.n_iter_ + 1  # trains on alone, here


# -- without processes ----------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3])
def test_each_process_gets_a_disjoint_part_of_every_batch_in_order(world):
    X = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    data = ArrayBatches(X, resolve_layout(X.shape[1:], None, "auto"), X.mean(0), X.std(0))
    whole = list(ShuffledBatches(data, 12, generator=torch.Generator().manual_seed(5)))
    parts = [
        list(
            ShuffledBatches(
                data,
                12,
                generator=torch.Generator().manual_seed(5),
                parts=lambda total, r=r: BatchPart(total, r, world, group=None),
            )
        )
        for r in range(world)
    ]
    for b, (batch, _) in enumerate(whole):
        pieces = [parts[r][b] for r in range(world)]
        assert [p.total for _, p in pieces] == [len(batch)] * world
        assert [p.start for _, p in pieces] == list(np.cumsum([0, *pieces[0][1].sizes])[:-1])
        np.testing.assert_array_equal(torch.cat([x for x, _ in pieces]), batch)


def test_split_pairs_of_a_part_are_the_rows_of_the_whole_split():
    full = torch.randn(7, 7, 2, 2)
    pos, neg = split_pairs(full)
    part_pos, part_neg = split_pairs(full[3:6], offset=3)
    torch.testing.assert_close(part_pos, pos[3:6], rtol=0, atol=0)
    torch.testing.assert_close(part_neg, neg[3:6], rtol=0, atol=0)


def test_batch_sizes_must_give_every_process_rows():
    ranks = Ranks.__new__(Ranks)
    ranks.size = 4
    ranks.check_batches(split_batches(100, 8), 8)
    with pytest.raises(ValueError, match=r"batch_size=3 .* 4 processes"):
        ranks.check_batches(split_batches(100, 3), 3)


def test_distributed_true_without_a_process_group_is_refused_before_training(digit_images):
    X, _ = digit_images
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        DeepInfomaxTransformer(distributed=True, max_epochs=1, width=4).fit(X[:50])


def test_launched_by_torchrun_without_a_group_warns(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="init_process_group"):
        assert training_ranks("auto") is None
    assert training_ranks(False) is None


def test_cuda_batch_norm_becomes_sync_batch_norm_and_back():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(4))
    layers = [module[1], module[3]]
    ranks = Ranks.__new__(Ranks)
    ranks.group = None
    with synchronised_batch_norm(module, ranks, torch.device("cuda")):
        assert all(isinstance(module[i], nn.SyncBatchNorm) for i in (1, 3))
        assert module[1].weight is layers[0].weight
        assert module[1].running_mean is layers[0].running_mean
    assert module[1] is layers[0] and module[3] is layers[1]
