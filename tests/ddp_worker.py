"""One process of the data-parallel tests (tests/test_distributed.py), under torchrun.

python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py \
    CASES.json OUT_DIR WATCHDOG [GROUP_TIMEOUT]

Every process runs the cases of CASES.json in order, each by its ``"kind"``:

- ``"fit"`` (the default): every process fits the same estimator on the same data; rank 0
  writes the fitted estimator (pickle) and its safe model file. A case may ask for
  ``"unsynced_batch_norm"``: BatchNorm then normalises each process's rows alone, the
  difference the test must detect.
- ``"threads"``: two fits at once in two threads, and one in the main thread with this
  process's torchrun environment hidden, all with ``distributed="auto"`` inside the
  initialised group; then a fit with ``distributed=False``. Writes every fit's codes and the
  warnings.
- ``"fault"`` / ``"interrupt"``: a data-parallel fit in which rank 1 raises at its third
  training step / rank 0 gets two Ctrl-C (SIGINT) there. Writes what each process's fit
  raised, then waits for the other's (the group is gone after it, so this kind comes last).
- ``"forever"``: a data-parallel fit that goes on until the test kills a process; writes
  ``started.rank{r}`` after the first training step.

Each process writes its PID to ``pid.rank{r}`` first, dies with its parent, torchrun
(``PR_SET_PDEATHSIG``: torchrun starts it in a session of its own, out of reach of a signal
to torchrun's process group), and exits with a traceback of every thread after WATCHDOG
seconds. The process group's timeout is GROUP_TIMEOUT seconds (60 by default).
"""

import contextlib
import ctypes
import datetime
import faulthandler
import json
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import dimlearn
import dimlearn.distributed
from dimlearn import DeepInfomaxTransformer
from dimlearn.net import DeepInfomaxNet

PEER_WAIT = 90.0
"""Seconds a process whose fit failed waits for the other's outcome (more than the group's
timeout, so that the other's fit ends by itself, however it ends)."""


def _die_with_parent() -> None:
    """Be killed (SIGKILL) when the parent process ends, on Linux."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL) != 0:  # 1: PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)


@contextlib.contextmanager
def _nothing(module, ranks, device):
    yield module


def _at_training_step(number: int, action) -> None:
    """Call ``action()`` at the start of this process's ``number``-th training step."""
    original = DeepInfomaxNet.train_step_single
    steps = []

    def step(net, batch, **fit_params):
        steps.append(1)
        if len(steps) == number:
            action()
        return original(net, batch, **fit_params)

    DeepInfomaxNet.train_step_single = step


def _fit(case: dict, rank: int, out: Path, name: str) -> None:
    X = np.load(case["data"], mmap_mode="r")
    original = dimlearn.distributed.synchronised_batch_norm
    unsynced = case.get("unsynced_batch_norm", False)
    dimlearn.distributed.synchronised_batch_norm = _nothing if unsynced else original
    est = DeepInfomaxTransformer(**case["params"]).fit(X)
    if case.get("partial_fit"):
        est.partial_fit(X)
    dimlearn.distributed.synchronised_batch_norm = original
    if rank == 0:
        (out / f"{name}.pkl").write_bytes(pickle.dumps(est))
        dimlearn.save(est, out / f"{name}.safetensors")
    (out / f"{name}.rank{rank}.txt").write_text(repr(est.history_[-1, "train_loss"]))


def _threads(case: dict, rank: int, out: Path, name: str) -> None:
    X = np.load(case["data"])
    params = dict(case["params"], distributed="auto")
    codes = {}

    def fit(key: str) -> None:
        codes[key] = DeepInfomaxTransformer(**params).fit(X).transform(X)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=fit, args=(f"thread{i}",)) for i in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        hidden = os.environ.pop("RANK")  # as if other code had set up the group
        try:
            fit("no_torchrun_env")
        finally:
            os.environ["RANK"] = hidden
    codes["alone"] = DeepInfomaxTransformer(**dict(params, distributed=False)).fit(X).transform(X)
    np.savez(out / f"{name}.rank{rank}.npz", **codes)
    messages = [str(w.message) for w in caught]
    (out / f"{name}.warnings.rank{rank}.json").write_text(json.dumps(messages))


def _failing(case: dict, rank: int, out: Path, name: str) -> None:
    """A fit in which one process fails; record what every process's fit raised."""
    failing = {"fault": 1, "interrupt": 0}[case["kind"]]
    record = {"failing_rank": failing}

    def fail():
        record["failed_at"] = time.time()
        if case["kind"] == "fault":
            raise RuntimeError(f"injected fault on rank {rank} at training step 3")
        os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C: stop at the batch end
        os.kill(os.getpid(), signal.SIGINT)  # a second one: stop now

    if rank == failing:
        _at_training_step(3, fail)
    X = np.load(case["data"])
    try:
        DeepInfomaxTransformer(**case["params"]).fit(X)
        record.update(raised=None)
    except (Exception, KeyboardInterrupt) as error:
        record.update(raised=type(error).__name__, message=str(error))
    record.update(ended_at=time.time(), group_initialised_after=dist.is_initialized())
    (out / f"{name}.rank{rank}.json").write_text(json.dumps(record))
    other = out / f"{name}.rank{1 - rank}.json"
    deadline = time.monotonic() + PEER_WAIT
    while not other.exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # alive, so that torchrun does not end the other process


def _forever(case: dict, rank: int, out: Path, name: str) -> None:
    _at_training_step(1, lambda: (out / f"started.rank{rank}").write_text("1"))
    DeepInfomaxTransformer(**case["params"]).fit(np.load(case["data"]))


KINDS = {"fit": _fit, "threads": _threads, "fault": _failing, "interrupt": _failing}
KINDS["forever"] = _forever


def main(cases_path: str, out_dir: str, watchdog: str, group_timeout: str = "60") -> None:
    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    (out / f"pid.rank{rank}").write_text(str(os.getpid()))
    _die_with_parent()
    faulthandler.dump_traceback_later(float(watchdog), exit=True)
    timeout = datetime.timedelta(seconds=float(group_timeout))
    dist.init_process_group("gloo", timeout=timeout)
    torch.set_num_threads(1)
    cases = json.loads(Path(cases_path).read_text())
    for name, case in cases.items():
        KINDS[case.get("kind", "fit")](case, rank, out, name)
    if any(case.get("kind") in ("fault", "interrupt") for case in cases.values()):
        return  # the group failed: nothing more to do together
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
