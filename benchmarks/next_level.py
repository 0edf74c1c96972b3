"""The next level on photos (issue 23, part 2): ideas for more quality per CPU minute, each a
measured row next to today's defaults at the same budget, with the code (64-d) and the conv
level (4096-d) probed.

    python -m benchmarks.next_level --budget-minutes 5 --n-train 10000      # the 5-minute proxy
    python -m benchmarks.next_level --only defaults "narrow critic" --name next_level_round2
    python -m benchmarks.next_level --dataset digits --budget-minutes 0.1 --n-train 500  # smoke

Every row is the estimator with its public parameters, nothing of dimlearn patched: an idea
that is no parameter of its own is expressed through an extension point, an encoder class
(``encoder=``), an optimiser (``optimizer=``, ``optimizer__*``), a callback (``callbacks=``)
or an augmentation (``augmentation=``). The ideas:

- ``narrow critic``: every critic's hidden width and embedding 4 * width instead of
  8 * width (the local critic's 1x1 convolutions at every local-map position cost as much
  arithmetic as the encoder): ``critic_width=256`` (at the default ``width=64``).
- ``two-scale local MI``: a second local critic contrasting the code with the last conv
  layer's map (4 x 4 positions of 4 * width channels on 32 x 32 images), the local term the
  mean of the two scales (the DIM paper's multi-scale form, simplified): ``local_scales=2``.
- ``lr 2e-3``, ``batch 256, lr 2e-3``, ``lr 5e-4``: the larger step, the larger batch with a
  scaled lr, the smaller step.
- ``weight decay 1e-4``: AdamW's decoupled weight decay instead of Adam:
  ``optimizer="adamw", optimizer__weight_decay=1e-4``.
- ``EMA of weights``: the fitted model is an exponential moving average of the weights and
  BatchNorm statistics over the training steps (decay 0.998): the callback
  :class:`WeightAverage`.
- ``resized crops``: the two views' crops are random-resized crops (30-100% of the area,
  aspect 3/4 to 4/3, resized back) instead of shifts of up to an eighth of the side;
  ``jitter 0.6``: with a stronger colour jitter too (0.6 instead of 0.4): the augmentation
  :func:`resized_view`.
- ``local_scales=2, critic_width=256``: the two that won together (measured as
  ``two-scale, narrow critic`` too, which trained the same networks to the same codes).
- ``residual block``: a ResNet basic block (two 3x3 convolutions and a skip) after the
  encoder's second convolution, so the local map is deeper (``encoder=ResidualLocalEncoder``);
  ``local map of 4w channels``: the local map twice as wide (256 channels at ``width=64``),
  the third convolution reading it (``encoder=WiderLocalEncoder``); ``residual block,
  local_scales=2, critic_width=256``: the block on the best row so far.

Retired rows, whose ideas reach inside the objective, where no extension point goes (their
measured results stay in ``benchmarks/results/next_level_round1.md`` and
``next_level_round3.md``): ``tanh-clipped scores`` (AMDIM's ``c * tanh(s / c)``, c = 10, on
every critic score before infoNCE, plus 0.05 times the mean squared raw score), ``same-view
pairs too`` (each view's code also contrasted with its own view's local map, beside the
other view's) and ``two-scale, same-view pairs, narrow critic``.

Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import torch
from skorch.callbacks import Callback
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dimlearn.networks import ConvEncoder, conv_plan
from dimlearn.views import colour_jitter

from .common import (
    DATASETS,
    RESULTS_DIR,
    DatasetMissing,
    command_line,
    load_dataset,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)
from .quality import fit_dim, probe_rows, scored

LEVELS = ("code", "conv")

# -- the ideas that are not parameters of their own, through the extension points ------------

EMA_DECAY = 0.998


class WeightAverage(Callback):
    """An exponential moving average of the weights (and BatchNorm buffers), updated after
    every training step; the module takes the average when training ends, so the fitted
    model is the average."""

    def __init__(self, decay: float = EMA_DECAY):
        self.decay = decay

    def on_train_begin(self, net, **kwargs):
        average = get_ema_multi_avg_fn(self.decay)
        self.average_ = AveragedModel(net.module_, multi_avg_fn=average, use_buffers=True)

    def on_batch_end(self, net, training=True, **kwargs):
        if training:
            self.average_.update_parameters(net.module_)

    def on_train_end(self, net, **kwargs):
        net.module_.load_state_dict(self.average_.module.state_dict())


class BasicBlock(torch.nn.Module):
    """ResNet's basic block at constant width: ``relu(x + BN(conv(relu(BN(conv(x))))))``
    with 3x3 convolutions and no bias before a BatchNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            torch.nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResidualLocalEncoder(ConvEncoder):
    """The conv encoder with a :class:`BasicBlock` after its second convolution: the local
    map (same shape) is two 3x3 convolutions deeper, and so is everything after it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_local.append(BasicBlock(self.local_shape[0]))


LOCAL_CHANNELS = 4
"""The wider local map's channels, in units of ``width`` (the encoder's own: 2)."""


class WiderLocalEncoder(ConvEncoder):
    """The conv encoder with a local map of ``LOCAL_CHANNELS * width`` channels (4w: 256 at
    ``width=64``) instead of 2w, the same positions; the third convolution reads it."""

    def __init__(self, in_channels, height, width_px, latent_dim, width):
        super().__init__(in_channels, height, width_px, latent_dim, width)
        _, second, third = conv_plan(height, width_px)
        wide = LOCAL_CHANNELS * width

        def conv(n_in, n_out, layer):
            return torch.nn.Conv2d(
                n_in, n_out, layer["kernel"], layer["stride"], layer["padding"], bias=False
            )

        # the second convolution and its BatchNorm, and the third convolution
        self.to_local[2] = conv(width, wide, second)
        self.to_local[3] = torch.nn.BatchNorm2d(wide)
        self.to_fc[0] = conv(wide, 4 * width, third)
        self.local_shape = (wide, *second["side"])


CROP_SCALE = (0.3, 1.0)


def resized_crop_flip(images, generator=None, part=None, flip=True, scale=CROP_SCALE):
    """A random crop of ``scale`` of the image's area (aspect ratio 3/4 to 4/3) resized back
    to the image's size (bilinear, reflected at the edges), mirrored with ``flip``: the
    random-resized crop of SimCLR and AMDIM, for a whole batch in one ``grid_sample``."""
    n, _, h, w = images.shape
    total = n if part is None else part.total
    mine = slice(0, n) if part is None else part.rows
    u = torch.rand(total, 5, device=images.device, generator=generator)[mine]
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u[:, 1])
    crop_w, crop_h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = torch.where((u[:, 4] < 0.5) & flip, -crop_w, crop_w)
    theta[:, 0, 2] = (1 - crop_w) * (2 * u[:, 2] - 1)
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = (1 - crop_h) * (2 * u[:, 3] - 1)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(
        images.float(), grid, padding_mode="reflection", align_corners=False
    )


JITTER = 0.4
"""The colour jitter of :func:`dimlearn.views.image_view`."""


def resized_view(images, generator=None, part=None, flip=True, jitter=JITTER):
    """One view for two-view training (the estimator's ``augmentation``): a random-resized
    crop (:func:`resized_crop_flip`) instead of :func:`dimlearn.views.image_view`'s shifts,
    then its colour jitter (of strength ``jitter``) and random greyscale."""
    cropped = resized_crop_flip(images, generator, part, flip)
    return colour_jitter(cropped, generator, part, strength=jitter)


NARROW = 4 * 64  # 4 * width at the default width=64
BEST = dict(local_scales=2, critic_width=NARROW)

IDEAS = [  # label, the estimator's parameters
    ("defaults", {}),
    ("narrow critic", dict(critic_width=NARROW)),
    ("two-scale local MI", dict(local_scales=2)),
    ("lr 2e-3", dict(lr=2e-3)),
    ("batch 256, lr 2e-3", dict(batch_size=256, lr=2e-3)),
    ("weight decay 1e-4", dict(optimizer="adamw", optimizer__weight_decay=1e-4)),
    (f"EMA of weights ({EMA_DECAY})", dict(callbacks=[WeightAverage(EMA_DECAY)])),
    ("resized crops", dict(augmentation=resized_view)),
    ("resized crops, jitter 0.6", dict(augmentation=functools.partial(resized_view, jitter=0.6))),
    ("lr 5e-4", dict(lr=5e-4)),
    ("local_scales=2, critic_width=256", BEST),
    ("residual block", dict(encoder=ResidualLocalEncoder)),
    (f"local map of {LOCAL_CHANNELS}w channels", dict(encoder=WiderLocalEncoder)),
    ("residual block, local_scales=2, critic_width=256", dict(BEST, encoder=ResidualLocalEncoder)),
]


def described(value):
    """A row's parameters as JSON: classes, functions and callbacks by name."""
    if isinstance(value, dict):
        return {name: described(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [described(item) for item in value]
    if isinstance(value, functools.partial):
        keywords = ", ".join(f"{k}={v!r}" for k, v in value.keywords.items())
        return f"{described(value.func)}({keywords})"
    if isinstance(value, Callback):
        arguments = ", ".join(f"{k}={v!r}" for k, v in value.get_params().items())
        return f"{type(value).__qualname__}({arguments})"
    if callable(value):
        return value.__qualname__
    return value


COLUMNS = [
    ("features", "features"),
    ("dims", "dims"),
    ("linear", "linear %", "pct"),
    ("knn10_cos", "kNN-10 cos %", "pct"),
    ("p@10_cos", "P@10 cos %", "pct"),
    ("epochs", "epochs"),
    ("train_s", "train s", ".0f"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10")
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--n-probe", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="labels of the rows to run")
    parser.add_argument("--name", default="next_level")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    try:
        X_fit, y_fit, X_te, y_te, _ = load_dataset(
            args.dataset, args.n_train, args.n_test, args.seed
        )
    except DatasetMissing as missing:
        print(f"skipped: {missing}", file=sys.stderr)
        return 0
    info = machine_info()
    print(f"{args.name}: {len(X_fit)} train images; {machine_line(info)}", flush=True)
    rows_probe = probe_rows(len(X_fit), args.n_probe, args.seed)
    X_tr, y_tr = X_fit[rows_probe], y_fit[rows_probe]
    chosen = args.only or [label for label, _ in IDEAS]
    unknown = set(chosen) - {label for label, _ in IDEAS}
    if unknown:
        parser.error(f"no such rows: {sorted(unknown)}")
    rows, start = [], time.perf_counter()
    for label, params in IDEAS:
        if label not in chosen:
            continue
        dim, fit_info = fit_dim(X_fit, args.budget_minutes * 60, args.seed, **params)
        fit_info.update(views=dim.views_, precision=dim.precision_)
        for level in LEVELS:
            dim.set_params(feature_level=level)
            rows.append(
                scored(
                    f"{label}: {level}",
                    dim.transform(X_tr),
                    dim.transform(X_te),
                    y_tr,
                    y_te,
                    idea=label,
                    level=level,
                    **fit_info,
                )
            )
    wall = time.perf_counter() - start
    payload = {
        "name": args.name,
        "dataset": args.dataset,
        "n_train": len(X_fit),
        "n_test": len(X_te),
        "n_probe": len(rows_probe),
        "seed": args.seed,
        "budget_minutes": args.budget_minutes,
        "wall_seconds": wall,
        "machine": info,
        "rows": rows,
        "ideas": {label: described(params) for label, params in IDEAS},
    }
    header = (
        f"## {args.name}\n\n{args.dataset}, {len(X_fit)} train / {len(X_te)} test images "
        f"(probes fit on {len(rows_probe)} of the train images), seed {args.seed}, DIM "
        f"training budget {args.budget_minutes:g} min per row, defaults (views and precision "
        f"'auto') plus the row's parameters; whole run {wall / 60:.1f} min. "
        f"Machine: {machine_line(info)}.\n"
        f"Command: `{command_line('benchmarks.next_level', argv)}`\n\n"
    )
    md = write_results(args.name, payload, header + markdown_table(rows, COLUMNS), args.out)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
