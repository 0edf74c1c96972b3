"""The next level on photos (issue 23, part 2): ideas for more quality per CPU minute, each a
measured row next to today's defaults at the same budget, with the code (64-d) and the conv
level (4096-d) probed.

    python -m benchmarks.next_level --budget-minutes 5 --n-train 10000      # the 5-minute proxy
    python -m benchmarks.next_level --only defaults "narrow critic" --name next_level_round2
    python -m benchmarks.next_level --dataset digits --budget-minutes 0.1 --n-train 500  # smoke

An idea that is not (yet) a parameter of the estimator is tried here by changing one piece of
dimlearn for the duration of its row (``unittest.mock.patch``), so a row is measured before
any of it becomes product code; the ideas that win become parameters or defaults and are
measured again through the estimator alone. The ideas:

- ``narrow critic``: every critic's hidden width and embedding 4 * width instead of
  8 * width (the local critic's 1x1 convolutions at every local-map position cost as much
  arithmetic as the encoder); now the estimator's ``critic_width``.
- ``tanh-clipped scores``: AMDIM's ``c * tanh(s / c)`` (c = 10) on every critic score before
  infoNCE, plus 0.05 times the mean squared raw score.
- ``two-scale local MI``: a second local critic contrasting the code with the last conv
  layer's map (4 x 4 positions of 4 * width channels on 32 x 32 images), the local term the
  mean of the two scales (the DIM paper's multi-scale form, simplified); now the estimator's
  ``local_scales=2``.
- ``lr 2e-3``, ``batch 256, lr 2e-3``: the larger step and the larger batch with a scaled lr.
- ``weight decay 1e-4``: AdamW's decoupled weight decay instead of Adam.
- ``EMA of weights``: the fitted model is an exponential moving average of the weights and
  BatchNorm statistics over the training steps (decay 0.998).
- ``resized crops``: the two views' crops are random-resized crops (30-100% of the area,
  aspect 3/4 to 4/3, resized back) instead of shifts of up to an eighth of the side;
  ``jitter 0.6``: with a stronger colour jitter too (0.6 instead of 0.4).
- ``same-view pairs too``: each view's code is also contrasted with its own view's local map
  (the DIM paper's pairs) beside the other view's (AMDIM's); combinations of the above.
- ``local_scales=2, critic_width=256``: the two that won, through the estimator's parameters
  (no patch).
- ``residual block``: a ResNet basic block (two 3x3 convolutions and a skip) after the
  encoder's second convolution, so the local map is deeper; ``local map of 4w channels``:
  the local map twice as wide (256 channels at ``width=64``), the third convolution reading
  it; ``residual block, local_scales=2, critic_width=256``: the block on the best row so far.

Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
import types
from pathlib import Path
from unittest import mock

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import dimlearn.infomax
import dimlearn.net
import dimlearn.training
import dimlearn.views
from dimlearn.critics import LocalDotCritic
from dimlearn.net import plain_module
from dimlearn.networks import ConvEncoder, conv_plan
from dimlearn.settings import Architecture

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

# -- the ideas that are not parameters: each a context manager around one row -----------------


@contextlib.contextmanager
def narrow_critic():
    with mock.patch.object(Architecture, "critic_hidden", property(lambda a: 4 * a.width)):
        yield


CLIP, SCORE_PENALTY = 10.0, 0.05


@contextlib.contextmanager
def tanh_clipped_scores():
    plain = dimlearn.infomax.mi_loss

    def clipped(pos, neg, estimator):
        pos, neg = pos.float(), neg.float()
        penalty = SCORE_PENALTY * torch.cat([pos.reshape(-1), neg.reshape(-1)]).square().mean()
        return plain(CLIP * torch.tanh(pos / CLIP), CLIP * torch.tanh(neg / CLIP), estimator) + (
            penalty
        )

    with mock.patch.object(dimlearn.infomax, "mi_loss", clipped):
        yield


@contextlib.contextmanager
def extra_local_pairs(conv_scale=True, same_view=False):
    """More local pairs in the local term, which becomes the mean of its parts:

    - ``conv_scale`` (two-scale local MI): a second local critic contrasts each view's code
      with the other view's last conv layer's map;
    - ``same_view``: each view's code is also contrasted with its own view's local map (the
      DIM paper's pairs, beside AMDIM's cross-view ones), by the same local critic.

    Forward hooks keep the maps (in training only) and the sampled codes are kept as they
    are drawn."""
    build = dimlearn.training.build_module
    sample = dimlearn.infomax.sample_code
    codes: list = []

    def kept_sample(mu, logvar, noise=None):
        z = sample(mu, logvar, noise=noise)
        codes.append(z)
        return z

    def terms(self, x, names, **step):  # step: the batch part and the generator
        codes.clear()
        self._maps = {"local": [], "conv": []}
        out = dimlearn.infomax.DeepInfomaxModule.terms(self, x, names, **step)
        n = len(codes)
        parts = []
        if "local" in names and n:
            parts.append(out["local"])
            pairs = []
            if conv_scale:
                pairs += [(self.conv_critic, self._maps["conv"][(k + 1) % n], k) for k in range(n)]
            if same_view and n > 1:
                pairs += [(self.local_critic, self._maps["local"][k], k) for k in range(n)]
            for critic, local_map, k in pairs:
                pos, neg = dimlearn.infomax.contrast(critic, local_map, codes[k], self.negatives)
                parts.append(dimlearn.infomax.mi_loss(pos, neg, self.mi_estimator) / n)
            out["local"] = parts[0] + sum(parts[1:])  # each extra set: mean over views
            out["local"] = out["local"] / (1 + bool(conv_scale) + bool(same_view and n > 1))
        self._maps = {"local": [], "conv": []}
        return out

    def build_with_pairs(config, layout):
        module = build(config, layout)
        encoder = module.encoder
        if not isinstance(encoder, ConvEncoder):
            return module  # tables: nothing to add
        if conv_scale:
            side = conv_plan(*layout.height_width)[2]["side"]
            module.conv_critic = LocalDotCritic(
                (4 * config.architecture.width, *side),
                config.architecture.latent_dim,
                config.architecture.critic_hidden,
                config.objective.temperature,
            )

        def keeper(kind):
            def keep(_, __, output):
                if module.training:
                    module._maps[kind].append(output)

            return keep

        encoder.to_local.register_forward_hook(keeper("local"))
        encoder.to_fc[2].register_forward_hook(keeper("conv"))
        module._maps = {"local": [], "conv": []}
        module.terms = types.MethodType(terms, module)
        return module

    with (
        mock.patch.object(dimlearn.training, "build_module", build_with_pairs),
        mock.patch.object(dimlearn.infomax, "sample_code", kept_sample),
    ):
        yield


two_scale_local = extra_local_pairs


@contextlib.contextmanager
def combined(*contexts):
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context())
        yield


@contextlib.contextmanager
def weight_decay(value):
    adam = torch.optim.Adam
    decayed = functools.partial(torch.optim.AdamW, weight_decay=value)
    with mock.patch.object(torch.optim, "Adam", decayed):
        yield
    assert torch.optim.Adam is adam


EMA_DECAY = 0.998


@contextlib.contextmanager
def weight_ema(decay=EMA_DECAY):
    """An exponential moving average of the weights (and BatchNorm buffers), updated after
    every optimiser step; the fitted model takes the average at the end of training."""
    fit = dimlearn.net._fit_net

    def fit_with_ema(net, dataset):
        module = plain_module(net)
        average = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        step = net.train_step

        def train_step(batch, **fit_params):
            out = step(batch, **fit_params)
            average.update_parameters(module)
            return out

        net.train_step = train_step
        try:
            return fit(net, dataset)
        finally:
            del net.train_step
            module.load_state_dict(average.module.state_dict())

    with mock.patch.object(dimlearn.net, "_fit_net", fit_with_ema):
        yield


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

        self.to_local[2] = conv(width, wide, second)
        self.to_local[3] = torch.nn.BatchNorm2d(wide)
        self.to_fc[0] = conv(wide, 4 * width, third)
        self.local_shape = (wide, *second["side"])


@contextlib.contextmanager
def encoder(cls):
    """Image models are built with the conv encoder ``cls`` instead of dimlearn's."""
    with mock.patch.object(dimlearn.infomax, "ConvEncoder", cls):
        yield


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


@contextlib.contextmanager
def resized_crops(jitter=None):
    """Two-view training's crops become random-resized crops; ``jitter``: a stronger colour
    jitter than the 0.4 of :func:`dimlearn.views.colour_jitter`."""
    patches = [mock.patch.object(dimlearn.views, "random_crop_flip", resized_crop_flip)]
    if jitter is not None:
        plain = dimlearn.views.colour_jitter
        stronger = functools.partial(plain, strength=jitter)
        patches.append(mock.patch.object(dimlearn.views, "colour_jitter", stronger))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


IDEAS = [  # label, estimator parameters, context
    ("defaults", {}, None),
    ("narrow critic", {}, narrow_critic),
    ("tanh-clipped scores", {}, tanh_clipped_scores),
    ("two-scale local MI", {}, two_scale_local),
    ("lr 2e-3", dict(lr=2e-3), None),
    ("batch 256, lr 2e-3", dict(batch_size=256, lr=2e-3), None),
    ("weight decay 1e-4", {}, functools.partial(weight_decay, 1e-4)),
    (f"EMA of weights ({EMA_DECAY})", {}, weight_ema),
    ("resized crops", {}, resized_crops),
    ("resized crops, jitter 0.6", {}, functools.partial(resized_crops, 0.6)),
    ("two-scale, narrow critic", {}, functools.partial(combined, two_scale_local, narrow_critic)),
    (
        "same-view pairs too",
        {},
        functools.partial(extra_local_pairs, conv_scale=False, same_view=True),
    ),
    (
        "two-scale, same-view pairs, narrow critic",
        {},
        functools.partial(
            combined,
            functools.partial(extra_local_pairs, same_view=True),
            narrow_critic,
        ),
    ),
    ("lr 5e-4", dict(lr=5e-4), None),
    # the two that won, as the estimator's parameters (no patch)
    ("local_scales=2, critic_width=256", dict(local_scales=2, critic_width=256), None),
    ("residual block", {}, functools.partial(encoder, ResidualLocalEncoder)),
    (f"local map of {LOCAL_CHANNELS}w channels", {}, functools.partial(encoder, WiderLocalEncoder)),
    (
        "residual block, local_scales=2, critic_width=256",
        dict(local_scales=2, critic_width=256),
        functools.partial(encoder, ResidualLocalEncoder),
    ),
]

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
    chosen = args.only or [label for label, _, _ in IDEAS]
    unknown = set(chosen) - {label for label, _, _ in IDEAS}
    if unknown:
        parser.error(f"no such rows: {sorted(unknown)}")
    rows, start = [], time.perf_counter()
    for label, params, context in IDEAS:
        if label not in chosen:
            continue
        with context() if context else contextlib.nullcontext():
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
        "ideas": {label: params for label, params, _ in IDEAS},
    }
    header = (
        f"## {args.name}\n\n{args.dataset}, {len(X_fit)} train / {len(X_te)} test images "
        f"(probes fit on {len(rows_probe)} of the train images), seed {args.seed}, DIM "
        f"training budget {args.budget_minutes:g} min per row, defaults (views and precision "
        f"'auto') plus the row's idea; whole run {wall / 60:.1f} min. "
        f"Machine: {machine_line(info)}.\n"
        f"Command: `{command_line('benchmarks.next_level', argv)}`\n\n"
    )
    md = write_results(args.name, payload, header + markdown_table(rows, COLUMNS), args.out)
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
