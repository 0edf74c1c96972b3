"""One process of the data-parallel equality test (tests/test_distributed.py), under torchrun.

python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py CASES.json OUT_DIR

Every process fits the same estimator on the same data; rank 0 writes the fitted estimator
(pickle) and its safe model file per case. A case may ask for ``"unsynced_batch_norm"``:
BatchNorm then normalises each process's rows alone, the difference the test must detect.
"""

import contextlib
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import dimlearn
import dimlearn.distributed
from dimlearn import DeepInfomaxTransformer


@contextlib.contextmanager
def _nothing(module, ranks, device):
    yield module


def main(cases_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    out = Path(out_dir)
    original = dimlearn.distributed.synchronised_batch_norm
    for name, case in json.loads(Path(cases_path).read_text()).items():
        X = np.load(case["data"], mmap_mode="r")
        unsynced = case.get("unsynced_batch_norm", False)
        dimlearn.distributed.synchronised_batch_norm = _nothing if unsynced else original
        est = DeepInfomaxTransformer(**case["params"]).fit(X)
        if case.get("partial_fit"):
            est.partial_fit(X)
        if rank == 0:
            (out / f"{name}.pkl").write_bytes(pickle.dumps(est))
            dimlearn.save(est, out / f"{name}.safetensors")
        (out / f"{name}.rank{rank}.txt").write_text(repr(est.history_[-1, "train_loss"]))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
