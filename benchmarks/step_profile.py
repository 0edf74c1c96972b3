"""Where a training step's time goes: milliseconds per step of the default networks on
32x32x3 images at batch 128, per precision, memory format and number of views, the share of
the step's CPU time each kind of operator takes (``torch.profiler``), and how close the step
comes to the machine's roof: the step's floating-point operations
(``torch.utils.flop_counter``: convolutions and matrix products, forward and backward), the
GFLOP/s it achieves, and the GFLOP/s of a large matrix product of the same dtype measured in
the same run (float32 and bfloat16: on a CPU without AVX512-BF16 or AMX, bfloat16 is
emulated and its roof is low).

    python -m benchmarks.step_profile                 # about a minute on 2 cores
    python -m benchmarks.step_profile --steps 2 --width 8 --batch-size 16   # a smoke run

The step is the estimator's (its module, loss, Adam and two-view drawing) in a plain loop,
so what is measured is the arithmetic, not the wrapper (``benchmarks.speed`` measures that).
Synthetic uint8 images: the speed does not depend on the content.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dimlearn import DeepInfomaxTransformer
from dimlearn.config import resolved
from dimlearn.devices import native_bfloat16
from dimlearn.infomax import build_module
from dimlearn.inputs import ArrayBatches, channel_stats, resolve_layout
from dimlearn.objectives import DeepInfomaxLoss
from dimlearn.settings import Settings
from dimlearn.views import two_views

from .common import (
    RESULTS_DIR,
    command_line,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)
from .speed import synthetic_images

WARM_UP = 5
ROOF_SIZE = 1024
"""Side of the square matrices whose product measures the roof (large enough that the
product runs at the machine's peak: about 2 GFLOP per product)."""
SETTINGS = [
    ("float32, one view", dict(precision="float32", views=1)),
    ("float32, one view, channels-last", dict(precision="float32", views=1, channels_last=True)),
    ("bfloat16, one view", dict(precision="bfloat16", views=1)),
    ("float32, two views", dict(precision="float32", views=2)),
    ("bfloat16, two views", dict(precision="bfloat16", views=2)),
]

ROOF_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

KINDS = (  # the first pattern an operator's name contains decides its kind
    ("convolution", ("conv",)),
    ("matrix products", ("addmm", "mm", "matmul", "linear")),
    ("batch norm", ("batch_norm",)),
    ("optimizer", ("adam", "_foreach", "lerp")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, patterns in KINDS:
        if any(pattern in lowered for pattern in patterns):
            return kind
    return "other"


def roof(dtype: torch.dtype, size: int = ROOF_SIZE, repeats: int = 5) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product in ``dtype`` on this CPU (median of
    ``repeats`` after one warm-up product)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def step_flops(step) -> int:
    """Floating-point operations of one call of ``step`` (what torch's flop counter counts:
    convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


PARTS = ("encoder", "local_critic", "global_critic")
"""The parts of the module whose share of the forward pass's FLOPs each row records."""


def forward_flop_shares(module, loss_fn, x) -> dict:
    """Each part's share of the forward pass's FLOPs (without gradients: the backward pass
    is attributed to modules less cleanly), by :data:`PARTS`, the rest under ``"pairs"``
    (the scores of every code against every image and position)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, depth=3) as counter:
        loss_fn(module(x, loss_fn.active_terms))
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = counts.get("Global", 0) or 1

    def of(part: str) -> int:  # a critic is called through its layers, not its forward
        whole = f"DeepInfomaxModule.{part}"
        if whole in counts:
            return counts[whole]
        return sum(n for name, n in counts.items() if name.rsplit(".", 1)[0] == whole)

    shares = {part: of(part) / total for part in PARTS}
    shares["pairs"] = 1 - sum(shares.values())
    return {f"flops_{name}": share for name, share in shares.items()}


def one_setting(X, *, width, params, steps, seed=0) -> dict:
    channels_last = params.pop("channels_last", False)
    spec = DeepInfomaxTransformer(width=width, **params)
    layout = resolve_layout(X.shape[1:], None, "auto")
    config = resolved(
        Settings.from_params(spec.get_params()),
        layout,
        native_bfloat16=native_bfloat16(torch.device("cpu")),
        device_type="cpu",
    )
    batch = ArrayBatches(X, layout, *channel_stats(X, layout)).take(slice(None))
    torch.manual_seed(seed)
    module = build_module(config, layout).train()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    loss_fn = DeepInfomaxLoss(config.objective.weights)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if config.runtime.precision == "bfloat16" else None

    def step():
        x = two_views(batch, "image", generator) if config.views.views == 2 else batch
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(module(x, loss_fn.active_terms))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    for _ in range(WARM_UP):  # oneDNN creates its kernels and buffers in the first calls
        step()
    flops = step_flops(step)
    x = two_views(batch, "image", generator) if config.views.views == 2 else batch
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        parts = forward_flop_shares(module, loss_fn, x)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    shares = dict.fromkeys([kind for kind, _ in KINDS] + ["other"], 0.0)
    for event in prof.key_averages():
        shares[kind_of(event.key)] += event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    ms = 1000 * statistics.median(times)
    return {
        "ms_per_step": ms,
        "images_per_s": len(X) / (ms / 1000),
        "gflop_per_step": flops / 1e9,
        "gflops_per_s": flops / 1e9 / (ms / 1000),
        "dtype": "bfloat16" if dtype is not None else "float32",
        **parts,
        **{f"share_{kind}": value / total for kind, value in shares.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--roof-size", type=int, default=ROOF_SIZE, help="side of the roof's matrix product"
    )
    parser.add_argument("--only", nargs="+", metavar="SETTING", help="these settings only")
    parser.add_argument("--name", default="step_profile")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    X = synthetic_images(args.batch_size)
    one_setting(X, width=args.width, params=dict(SETTINGS[0][1]), steps=1)  # unrecorded
    roofs = {name: roof(dtype, args.roof_size) for name, dtype in ROOF_DTYPES.items()}
    print(", ".join(f"roof {k}: {v:.0f} GFLOP/s" for k, v in roofs.items()), flush=True)
    rows = []
    for label, params in SETTINGS:
        if args.only and label not in args.only:
            continue
        row = one_setting(X, width=args.width, params=dict(params), steps=args.steps)
        row["roof_fraction"] = row["gflops_per_s"] / roofs[row["dtype"]]
        rows.append({"setting": label, **row})
        print(
            f"  {label}: {row['ms_per_step']:.0f} ms per step, {row['gflops_per_s']:.0f} "
            f"GFLOP/s ({row['roof_fraction']:.0%} of the {row['dtype']} roof)",
            flush=True,
        )
    info = machine_info()
    native = native_bfloat16(torch.device("cpu"))
    command = command_line("benchmarks.step_profile", argv)
    columns = [
        ("setting", "setting"),
        ("ms_per_step", "ms per step", ".0f"),
        ("images_per_s", "images/s", ".0f"),
        ("gflop_per_step", "GFLOP per step", ".1f"),
        ("gflops_per_s", "GFLOP/s", ".0f"),
        ("roof_fraction", "of the roof", "pct"),
    ]
    columns += [(f"flops_{part}", f"{part} FLOPs %", "pct") for part in (*PARTS, "pairs")]
    columns += [(f"share_{kind}", f"{kind} %", "pct") for kind, _ in KINDS]
    columns.append(("share_other", "other %", "pct"))
    markdown = (
        f"## {args.name}\n\nOne training step of the default networks (width {args.width}) "
        f"on {args.batch_size} images of 32x32x3, median of {args.steps} steps after "
        f"{WARM_UP} warm-up steps (and one unrecorded setting first, for the process's own "
        "warm-up); the shares are of the step's CPU time in 2 profiled steps, by "
        f"operator kind. This CPU computes bfloat16 natively: {native}. The roof, a "
        f"{args.roof_size} x {args.roof_size} matrix product in the same run: "
        + ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in roofs.items())
        + "; each row's fraction is of its own dtype's roof. The FLOPs columns are each "
        "part's share of the forward pass's operations (pairs: the scores of every code "
        "against every image and position). "
        f"Machine: {machine_line(info)}.\nCommand: `{command}`\n\n" + markdown_table(rows, columns)
    )
    write_results(
        args.name,
        {"machine": info, "native_bfloat16": native, "roof_gflops": roofs, "rows": rows},
        markdown,
        args.out,
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
