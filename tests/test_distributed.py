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
import copy
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import dimlearn
import dimlearn.distributed
from dimlearn import DeepInfomaxTransformer
from dimlearn.critics import split_pairs
from dimlearn.distributed import (
    BatchPart,
    Ranks,
    _claimed,
    synchronised_batch_norm,
    training_ranks,
)
from dimlearn.inputs import ArrayBatches, ShuffledBatches, resolve_layout
from dimlearn.networks import batch_norm_pairs
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


SHORT_GROUP_TIMEOUT = 10.0
"""The process group's timeout in seconds (``init_process_group(timeout=...)``) where one
process fails and the other may wait for it that long (60 s elsewhere, ``ddp_worker.py``)."""
LAUNCH_SECONDS = 60.0
"""Time for torchrun to start 2 processes that import torch and meet, with both cores busy
(about 5 s on an idle machine)."""
CASE_SECONDS = 30.0
"""Time for one case of the worker, with both cores busy (at most 3 s on an idle one)."""


def _budget(cases: int) -> float:
    """Seconds a launch of the worker on ``cases`` cases may take before it is stopped."""
    return LAUNCH_SECONDS + CASE_SECONDS * cases


def _torchrun(script: Path, *args: str, budget: float, pids: Path | None = None) -> str:
    """Run ``script`` on 2 processes with torchrun, on 127.0.0.1 only; its output. A failed
    launch is tried once more on a new port (a free port can be taken between choosing it
    and torchrun binding it); a real failure fails twice and its output is shown. A launch
    that runs past ``budget`` seconds is stopped and not tried again."""
    outputs = []
    for _ in range(2):
        returncode, output, left = _launch(script, *args, budget=budget, pids=pids)
        assert not left, f"worker processes {left} outlived torchrun:\n{output[-3000:]}"
        if returncode == 0:
            return output
        outputs.append(output[-3000:])
        if returncode is None:
            break
    raise AssertionError("\n---- second try ----\n".join(outputs))


def _start(script: Path, *args: str) -> subprocess.Popen:
    """torchrun of ``script`` on 2 processes on 127.0.0.1, in a session of its own."""
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
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _launch(
    script: Path, *args: str, budget: float, pids: Path | None = None
) -> tuple[int | None, str, list[int]]:
    """Run torchrun to its end or for ``budget`` seconds, then make sure that it and its
    workers are gone (:func:`_stop`). Returns its exit status (None when it ran past the
    budget), its output, and the workers still alive when torchrun ended (which none
    should be). ``pids``: the folder where the workers write their PIDs (``ddp_worker.py``)."""
    process = _start(script, *args)
    try:
        output, _ = process.communicate(timeout=budget)
        left = [pid for pid in _worker_pids(pids, script) if _alive(pid)]
        return process.returncode, output, left
    except subprocess.TimeoutExpired:
        _stop(process, pids, script)
        output, _ = process.communicate()
        return None, f"{output}\n[stopped: ran past its budget of {budget:.0f} s]", []
    finally:
        _stop(process, pids, script)


def _stop(process: subprocess.Popen, pids: Path | None, script: Path) -> None:
    """End torchrun and every worker it started, each in its own process group (torchrun
    starts each worker in a session of its own, so a signal to torchrun's group misses
    them): SIGTERM, up to 10 s to exit, then SIGKILL."""
    leaders = [process.pid, *_children(process.pid), *_worker_pids(pids, script)]
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = [pid for pid in dict.fromkeys(leaders) if _alive(pid)]
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # a worker that is no group's leader is signalled alone, never its group
                os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(_alive(pid) for pid in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)  # reap torchrun


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has ended; on Linux, from /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(parent: int) -> list[int]:
    """The PIDs of the processes whose parent is ``parent`` (Linux; elsewhere none)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def _worker_pids(pids: Path | None, script: Path) -> list[int]:
    """The PIDs the workers wrote to ``pids``, of processes that still run ``script``
    (a PID reused by another process is left alone)."""
    if pids is None:
        return []
    found = []
    for path in sorted(pids.glob("pid.rank*")):
        pid = int(path.read_text())
        try:
            running = script.name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            running = sys.platform != "linux"  # no /proc to check against
        if running:
            found.append(pid)
    return found


def _recorded_pids(out: Path) -> list[int]:
    """Every PID the workers wrote to ``out``, running or not."""
    return [int(path.read_text()) for path in sorted(out.glob("pid.rank*"))]


def _run_worker(out: Path, cases: dict, *group_timeout: str) -> str:
    """The worker on ``cases`` on 2 processes (writing to ``out``); its output."""
    (out / "cases.json").write_text(json.dumps(cases))
    budget = _budget(len(cases))
    watchdog = budget - 15  # the workers show where they hang before they are stopped
    args = (str(out / "cases.json"), str(out), str(watchdog), *group_timeout)
    return _torchrun(WORKER, *args, budget=budget, pids=out)


def _fit_here(case: dict) -> DeepInfomaxTransformer:
    X = np.load(case["data"])
    est = DeepInfomaxTransformer(**case["params"]).fit(X)
    if case.get("partial_fit"):
        est.partial_fit(X)
    return est


def _data(out: Path) -> dict:
    """The test data sets, written to ``out``: their paths by name."""
    rng = np.random.default_rng(0)
    paths = {"images": out / "images.npy", "tabular": out / "tabular.npy"}
    np.save(paths["images"], rng.integers(0, 256, size=(90, 8, 8, 3), dtype=np.uint8))
    np.save(paths["tabular"], rng.normal(size=(64, 10)).astype(np.float32))
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Launch the worker on 2 processes once; yield {case: (one process, rank 0, ...)}, and
    for "threads" the codes and warnings of each rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = _data(tmp)
    cases = {
        "images": {"data": data["images"], "params": IMAGES, "partial_fit": True},
        "tabular": {"data": data["tabular"], "params": TABULAR},
        "two_views": {
            "data": data["images"],
            # two views are each augmented already (augment=True is refused with them)
            "params": dict(IMAGES, views=2, augment=False, temperature=0.2, mi_estimator="infonce"),
        },
        "two_views_tabular": {
            "data": data["tabular"],
            "params": dict(TABULAR, views=2),
        },
        # the reconstruction term corrupts rows with donors from the whole batch
        "reconstruction": {
            "data": data["tabular"],
            "params": dict(TABULAR, reconstruction=0.5),
        },
        "unsynced": {
            "data": data["images"],
            "params": IMAGES,
            "partial_fit": True,
            "unsynced_batch_norm": True,
        },
        "threads": {"kind": "threads", "data": data["tabular"], "params": TABULAR},
    }
    _run_worker(tmp, cases)
    results = {
        "threads": (
            [dict(np.load(tmp / f"threads.rank{r}.npz")) for r in range(2)],
            [json.loads((tmp / f"threads.warnings.rank{r}.json").read_text()) for r in range(2)],
        )
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker
    try:
        for name, case in cases.items():
            if case.get("kind", "fit") != "fit":
                continue
            ranks = [(tmp / f"{name}.rank{r}.txt").read_text() for r in range(2)]
            other = pickle.loads((tmp / f"{name}.pkl").read_bytes())
            results[name] = (_fit_here(case), other, ranks, tmp / f"{name}.safetensors")
    finally:
        torch.set_num_threads(threads)  # the rest of the run keeps its threads
    yield results


def _history(est, key):
    return np.array([entry[key] for entry in est.history_ if key in entry], dtype=float)


LOSS_KEYS = [
    "train_loss",
    "train_global",
    "train_local",
    "train_prior",
    "train_local_local",
    "train_reconstruction",
]


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
@pytest.mark.parametrize(
    "case", ["images", "tabular", "two_views", "two_views_tabular", "reconstruction"]
)
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
    output = _torchrun(EXAMPLE, "--quick", "--out", str(out), budget=_budget(2))
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
    assert not hasattr(two.module_, "part") and not hasattr(two.module_, "generator")
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


@pytest.mark.distributed
@pytest.mark.slow
def test_fits_in_threads_of_a_process_in_a_group_each_train_alone(two_process_run):
    """Inside an initialised 2-process group, distributed="auto" leaves the group alone in
    two fits at once in threads of one process, and in a fit whose process torchrun did not
    start into the group: each trains alone, to the codes of distributed=False."""
    codes, caught = two_process_run["threads"]
    for rank in range(2):
        for fit in ("thread1", "thread2", "no_torchrun_env"):
            np.testing.assert_array_equal(codes[rank][fit], codes[rank]["alone"], err_msg=fit)
        in_threads = [m for m in caught[rank] if "a thread other than the main one" in m]
        no_env = [m for m in caught[rank] if "torchrun did not start this process (RANK" in m]
        assert len(in_threads) == 2 and len(no_env) == 1, caught[rank]
    np.testing.assert_array_equal(codes[0]["alone"], codes[1]["alone"])


# -- processes that fail or are killed ------------------------------------------------


def _one_case(out: Path, kind: str, **params) -> dict:
    return {kind: {"kind": kind, "data": _data(out)["tabular"], "params": dict(TABULAR, **params)}}


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, failing, raised, first_error",
    [
        ("fault", 1, "RuntimeError", "RuntimeError: injected fault on rank 1 at training step 3"),
        ("interrupt", 0, "KeyboardInterrupt", "KeyboardInterrupt"),  # a second Ctrl-C
    ],
)
def test_a_failure_in_one_process_ends_the_other_with_its_error(
    tmp_path, kind, failing, raised, first_error
):
    """One process's fit fails inside an epoch (an error, or a second Ctrl-C, which skorch
    swallows) and the process stays alive. The other's fit, left in a collective, ends
    within the group's timeout with an error that names the first process's (gloo closes
    no connection before the failing process ends: a test of a process that ends at once
    would race torchrun, which then stops the other itself)."""
    _run_worker(tmp_path, _one_case(tmp_path, kind, max_epochs=50), str(SHORT_GROUP_TIMEOUT))
    records = [json.loads((tmp_path / f"{kind}.rank{r}.json").read_text()) for r in range(2)]
    own, other = records[failing], records[1 - failing]
    assert own["raised"] == raised, own
    assert other["raised"] == "RuntimeError", other
    assert f"rank {failing} of 2 failed with {first_error}" in other["message"], other
    assert other["ended_at"] - own["failed_at"] < SHORT_GROUP_TIMEOUT + 10, (own, other)
    assert not own["group_initialised_after"] and not other["group_initialised_after"]


def _started(out: Path, process: subprocess.Popen) -> list[int]:
    """The workers' PIDs once both have run a training step (torchrun still running)."""
    deadline = time.monotonic() + _budget(1)
    while len(list(out.glob("started.rank*"))) < 2:
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.communicate()[0] if process.poll() is not None else ""
            pytest.fail(f"the workers did not start training:\n{output[-3000:]}")
        time.sleep(0.1)
    return _recorded_pids(out)


def _start_forever(out: Path) -> subprocess.Popen:
    cases = _one_case(out, "forever", max_epochs=10**6, max_time=_budget(2))
    (out / "cases.json").write_text(json.dumps(cases))
    return _start(WORKER, str(out / "cases.json"), str(out), str(_budget(3)))


@pytest.mark.distributed
@pytest.mark.slow
def test_a_worker_killed_mid_epoch_ends_the_run_and_no_process_is_left(tmp_path):
    process = _start_forever(tmp_path)
    try:
        pids = _started(tmp_path, process)
        os.kill(pids[1], signal.SIGKILL)
        try:
            output, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("torchrun still ran 90 s after one of its workers was killed")
        left = [pid for pid in pids if _alive(pid)]
    finally:
        _stop(process, tmp_path, WORKER)
    assert process.returncode != 0
    assert f"Signal 9 (SIGKILL) received by PID {pids[1]}" in output, output[-3000:]
    assert left == []


@pytest.mark.distributed
@pytest.mark.slow
def test_the_workers_die_with_torchrun(tmp_path):
    """torchrun starts each worker in a session of its own: killing torchrun (or its process
    group) does not reach them, so they must end themselves when it goes."""
    process = _start_forever(tmp_path)
    try:
        pids = _started(tmp_path, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in pids if _alive(pid)]
    finally:
        _stop(process, tmp_path, WORKER)
    assert left == []


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


class _PartWithMirroredRows(BatchPart):
    """Rank 0's half of a batch, the other process's rows made up: gathering appends a
    mirrored, shifted copy of this process's rows (no process group needed)."""

    def __init__(self, rows: int):
        super().__init__(2 * rows, rank=0, size=2, group=None)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, 2 * tensor.flip(0) + 1])


def test_cpu_batch_norm_gathers_the_batch_of_the_call_s_part_only():
    """The CPU hooks read the batch part from the context that the part's
    ``whole_batch_norm()`` opens (the module's forward enters it from its own ``part``
    argument): inside it a layer normalises with the whole batch's statistics and keeps
    this process's rows; outside it, in another thread, and in eval mode it is the plain
    layer."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3))
    reference = copy.deepcopy(module)
    x, part = torch.randn(5, 4), _PartWithMirroredRows(5)
    ranks = Ranks.__new__(Ranks)
    ranks.group = None
    seen_in_thread = []
    with synchronised_batch_norm(module, ranks, torch.device("cpu")):
        torch.testing.assert_close(module(x), reference(x), rtol=0, atol=0)
        with part.whole_batch_norm():
            gathered = module(x)
            thread = threading.Thread(target=lambda: seen_in_thread.append(module(x)))
            thread.start()
            thread.join()
            expected = reference[1](part.gather(reference[0](x)))[part.rows]
            torch.testing.assert_close(gathered, expected, rtol=0, atol=0)
            torch.testing.assert_close(seen_in_thread[0], reference(x), rtol=0, atol=0)
            module.eval(), reference.eval()
            torch.testing.assert_close(module(x), reference(x), rtol=0, atol=0)
        module.train()
        torch.testing.assert_close(module(x), reference.train()(x), rtol=0, atol=0)
    assert not module[1]._forward_hooks and not module[1]._forward_pre_hooks


def test_the_module_s_forward_opens_its_part_s_batch_norm_context_for_the_call_only():
    from dimlearn.distributed import _NORMALISED_PART
    from dimlearn.infomax import DeepInfomaxModule
    from dimlearn.networks import MLPEncoder

    module = DeepInfomaxModule(MLPEncoder(6, 3, 4), 3, critic_hidden=8)
    seen = []

    def terms(x, names, *, part=None, generator=None):
        seen.append((_NORMALISED_PART.get(), part))
        if names == ("fail",):
            raise RuntimeError("a failing step")
        return {}

    module.terms = terms
    part = BatchPart(8, rank=0, size=2, group=None)
    module(torch.randn(4, 6), ("local",), part=part)
    module(torch.randn(8, 6), ("local",))
    with pytest.raises(RuntimeError, match="a failing step"):
        module(torch.randn(4, 6), ("fail",), part=part)
    assert seen == [(part, part), (None, None), (part, part)]
    assert _NORMALISED_PART.get() is None


def test_distributed_true_without_a_process_group_is_refused_before_training(digit_images):
    X, _ = digit_images
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        DeepInfomaxTransformer(distributed=True, max_epochs=1, width=4).fit(X[:50])


def test_launched_by_torchrun_without_a_group_warns(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="init_process_group"):
        assert training_ranks("auto") is None
    assert training_ranks(False) is None


def test_auto_uses_only_the_group_torchrun_started_this_process_into(monkeypatch):
    """A group of 2 in which this process is rank 1 (torch.distributed faked)."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dimlearn.distributed, "Ranks", lambda: "the group's ranks")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    unset = r"torchrun did not start this process \(RANK, WORLD_SIZE, LOCAL_RANK not set\)"
    with pytest.warns(UserWarning, match=unset):
        assert training_ranks("auto") is None
    monkeypatch.setenv("RANK", "0")  # torchrun started it, into another group
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.warns(UserWarning, match="rank 1 of 2 in it, but RANK=0 and WORLD_SIZE=2"):
        assert training_ranks("auto") is None
    monkeypatch.setenv("RANK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert training_ranks("auto") == "the group's ranks"
        assert training_ranks(True) == "the group's ranks"
        assert training_ranks(False) is None
    in_thread = []
    with pytest.warns(UserWarning, match="a thread other than the main one"):
        thread = threading.Thread(target=lambda: in_thread.append(training_ranks("auto")))
        thread.start()
        thread.join()
    assert in_thread == [None]
    monkeypatch.delenv("RANK")
    assert training_ranks(True) == "the group's ranks"  # any group, when asked for


def test_one_thread_at_a_time_trains_on_a_group():
    group, refused = object(), []

    def in_another_thread():
        try:
            with _claimed(group):
                refused.append(False)
        except RuntimeError as error:
            refused.append(str(error))

    with _claimed(group), _claimed(group):  # one thread may enter again
        thread = threading.Thread(target=in_another_thread)
        thread.start()
        thread.join()
    assert "Another thread of this process is training on this" in refused[0]
    thread = threading.Thread(target=in_another_thread)  # released: another thread may train
    thread.start()
    thread.join()
    assert refused[1] is False


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
