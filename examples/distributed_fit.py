"""One model trained by several processes together (torchrun)
===========================================================

User story: one model trained by several processes together, on one machine's GPUs or on
several machines (data-parallel, PyTorch DistributedDataParallel under torchrun).

Every process runs this same script on the same data; each trains on its part of every
batch, and the result is the model one process would fit with the whole batch. Rank 0
prints, draws the training curves and writes the model file; every process ends with the
same fitted estimator.

::

    # one process (no launcher): an ordinary fit
    python examples/distributed_fit.py [--quick]
    # one machine, all its GPUs (or N CPU processes where there is none)
    torchrun --nproc-per-node gpu examples/distributed_fit.py --out dim.safetensors
    # two machines with 8 GPUs each: run on both, --node-rank 0 on the one at HOST
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST \\
        --master-port 29500 examples/distributed_fit.py --data images.npy --out dim.safetensors

``--data`` takes an .npy array of images (N, H, W, C) or rows; it is memory-mapped, so each
process reads only the rows of its batches. Without it: scikit-learn's 8x8 digits.
"""

import argparse
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch.distributed as dist
from sklearn.datasets import load_digits

import dimlearn
from dimlearn import DeepInfomaxTransformer
from dimlearn.plot import plot_history


def main(quick: bool, data: str | None, out: str | None) -> None:
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun
    if launched:
        # torchrun's environment says where rank 0 is; torch picks NCCL for CUDA tensors
        # and gloo for CPU ones
        dist.init_process_group()
    rank = dist.get_rank() if launched else 0
    world = dist.get_world_size() if launched else 1
    if data is None:
        X = load_digits().images  # (1797, 8, 8): grey images
    else:
        X = np.load(data, mmap_mode="r")
    params = dict(max_epochs=2, width=8) if quick else dict(max_epochs=10)
    started = time.perf_counter()
    # batch_size is the whole batch, cut into one part per process
    dim = DeepInfomaxTransformer(batch_size=128, random_state=0, **params).fit(X)
    seconds = time.perf_counter() - started
    if rank == 0:
        losses = ", ".join(f"{loss:.4f}" for loss in dim.loss_curve_)
        print(f"fitted on {len(X)} images by {world} process(es) in {seconds:.1f} s")
        print(f"loss per epoch: {losses}")
        plot_history(dim)  # the loss terms per epoch
        if out is not None:
            path = dimlearn.save(dim, Path(out))
            print(f"model written to {path}")
    if launched:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny network, 2 epochs")
    parser.add_argument("--data", help=".npy file of images or rows (default: digits)")
    parser.add_argument("--out", help="write the fitted model here (rank 0)")
    args = parser.parse_args()
    main(args.quick, args.data, args.out)
    if not args.quick and int(os.environ.get("RANK", "0")) == 0:
        plt.show()  # the training curves, in a window where there is a display
