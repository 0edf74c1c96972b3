"""Data-parallel training (torchrun + DistributedDataParallel, gloo on loopback) equals one
process on the whole batch: per-epoch losses, final weights, the fitted estimator.

The 2-process run is launched once per module (``tests/ddp_worker.py`` under torchrun, all
addresses 127.0.0.1) and its results compared with fits in this process with the same
parameters and ``random_state``, so the same initial weights and the same global batches.

Biases directly before a BatchNorm layer are compared more loosely, with the reason: the
normalisation removes them, so their exact gradient is 0 and what they get is float noise,
which Adam turns into steps of up to about ``lr`` in either direction. They (and the
running means of the BatchNorm layer after them, which track them) differ between any two
summation orders, 1 vs 2 processes as much as 1 vs 2 threads; they do not change the
training loss.
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
from dimlearn.networks import split_pairs

WORKER = Path(__file__).with_name("ddp_worker.py")
EXAMPLE = Path(__file__).parents[1] / "examples" / "distributed_fit.py"

IMAGES = dict(
    width=4,
    latent_dim=8,
    batch_size=21,  # 81 training rows: batches of 21, 20, 20, 20; parts of 11 + 10 rows
    early_stopping=True,
    augment=True,
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


def _pre_batch_norm(module: nn.Module) -> set[str]:
    """Names of biases directly followed by a BatchNorm layer, and of that layer's running
    mean (see the module docstring)."""
    names = set()
    for prefix, sequence in module.named_modules():
        if not isinstance(sequence, nn.Sequential):
            continue
        children = list(sequence.named_children())
        for (name, layer), (bn_name, after) in zip(children, children[1:], strict=False):
            if isinstance(after, nn.modules.batchnorm._BatchNorm) and layer.bias is not None:
                names |= {f"{prefix}.{name}.bias", f"{prefix}.{bn_name}.running_mean"}
    return names


def _history(est, key):
    return np.array([entry[key] for entry in est.history_ if key in entry], dtype=float)


LOSS_KEYS = ["train_loss", "train_global", "train_local", "train_prior", "train_local_local"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("case", ["images", "tabular"])
def test_two_processes_match_one_per_epoch_and_in_the_weights(two_process_run, case):
    one, two, ranks, _ = two_process_run[case]
    assert len(one.history_) == len(two.history_) == one.n_iter_ == two.n_iter_
    keys = [k for k in LOSS_KEYS + ["valid_loss"] if k in one.history_[0]]
    assert "train_loss" in keys
    for key in keys:
        # held-out losses run in eval mode on BatchNorm's running means (the loose ones)
        rtol = 1e-4 if key == "valid_loss" else 1e-5
        np.testing.assert_allclose(_history(two, key), _history(one, key), rtol=rtol, atol=1e-6)
    one_state, two_state = one.module_.state_dict(), two.module_.state_dict()
    assert one_state.keys() == two_state.keys()
    loose = _pre_batch_norm(one.module_)
    steps = sum(len(entry["batches"]) for entry in one.history_)
    for name, value in one_state.items():
        difference = float((two_state[name].double() - value.double()).abs().max())
        if name in loose:  # float-noise gradients; Adam's steps are about lr at most
            assert difference <= 2 * one.lr * steps, name
        else:
            assert difference <= 2e-5, (name, difference)
    assert ranks[0] == ranks[1]  # every process ends with the same history


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
    np.testing.assert_allclose(model.loss_curve_, one.loss_curve_, rtol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dim.safetensors"]


@pytest.mark.distributed
@pytest.mark.slow
def test_the_comparison_detects_batch_norm_statistics_of_one_process(two_process_run):
    """The control: BatchNorm on each process's rows alone (what plain DDP does) is what
    the test above must not let through."""
    one, unsynced, _, _ = two_process_run["unsynced"]
    gap = np.abs(_history(unsynced, "train_loss") - _history(one, "train_loss"))
    assert gap.max() > 1e-3
    loose = _pre_batch_norm(one.module_)
    state = unsynced.module_.state_dict()
    worst = max(
        float((state[n] - v).abs().max())
        for n, v in one.module_.state_dict().items()
        if n not in loose
    )
    assert worst > 1e-3


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
    np.testing.assert_allclose(codes, one.transform(X), atol=2e-2)
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
