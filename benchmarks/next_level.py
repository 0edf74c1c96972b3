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

- ``narrow critic``: the local critic's hidden width and embedding 4 * width instead of
  8 * width (its 1x1 convolutions at every local-map position cost as much arithmetic as the
  encoder).
- ``tanh-clipped scores``: AMDIM's ``c * tanh(s / c)`` (c = 10) on every critic score before
  infoNCE, plus 0.05 times the mean squared raw score.
- ``two-scale local MI``: a second local critic contrasting the code with the last conv
  layer's map (4 x 4 positions of 4 * width channels on 32 x 32 images), the local term the
  mean of the two scales (the DIM paper's multi-scale form, simplified).
- ``lr 2e-3``, ``batch 256, lr 2e-3``: the larger step and the larger batch with a scaled lr.
- ``weight decay 1e-4``: AdamW's decoupled weight decay instead of Adam.

Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
import types
from pathlib import Path
from unittest import mock

import torch

import dimlearn.infomax
import dimlearn.training
from dimlearn.config import TrainingConfig
from dimlearn.networks import ConvEncoder, LocalDotCritic, conv_plan

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
    with mock.patch.object(TrainingConfig, "critic_hidden", property(lambda c: 4 * c.width)):
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
def two_scale_local():
    """The module gets a second local critic on the last conv layer's output; a forward hook
    keeps that map (in training only) and the sampled codes are kept as they are drawn."""
    build = dimlearn.training.build_module
    sample = dimlearn.infomax.sample_code
    codes: list = []

    def kept_sample(mu, logvar, noise=None):
        z = sample(mu, logvar, noise=noise)
        codes.append(z)
        return z

    def two_scale_terms(self, x, names):
        codes.clear()
        self._conv_maps = []
        out = dimlearn.infomax.DeepInfomaxModule.terms(self, x, names)
        n = len(self._conv_maps)
        if "local" in names and n and len(codes) == n:
            losses = []
            for k in range(n):
                pos, neg = dimlearn.infomax.contrast(
                    self.conv_critic, self._conv_maps[(k + 1) % n], codes[k], self.negatives
                )
                losses.append(dimlearn.infomax.mi_loss(pos, neg, self.mi_estimator))
            out["local"] = (out["local"] + sum(losses) / n) / 2
        self._conv_maps = []
        return out

    def build_two_scale(config, layout):
        module = build(config, layout)
        encoder = module.encoder
        if not isinstance(encoder, ConvEncoder):
            return module  # tables: nothing to add
        side = conv_plan(*layout.height_width)[2]["side"]
        module.conv_critic = LocalDotCritic(
            (4 * config.width, *side), config.latent_dim, config.critic_hidden, config.temperature
        )

        def keep(_, __, output):
            if module.training:
                module._conv_maps.append(output)

        encoder.to_fc[2].register_forward_hook(keep)
        module._conv_maps = []
        module.terms = types.MethodType(two_scale_terms, module)
        return module

    with (
        mock.patch.object(dimlearn.training, "build_module", build_two_scale),
        mock.patch.object(dimlearn.infomax, "sample_code", kept_sample),
    ):
        yield


@contextlib.contextmanager
def weight_decay(value):
    adam = torch.optim.Adam
    decayed = functools.partial(torch.optim.AdamW, weight_decay=value)
    with mock.patch.object(torch.optim, "Adam", decayed):
        yield
    assert torch.optim.Adam is adam


IDEAS = [  # label, estimator parameters, context
    ("defaults", {}, None),
    ("narrow critic", {}, narrow_critic),
    ("tanh-clipped scores", {}, tanh_clipped_scores),
    ("two-scale local MI", {}, two_scale_local),
    ("lr 2e-3", dict(lr=2e-3), None),
    ("batch 256, lr 2e-3", dict(batch_size=256, lr=2e-3), None),
    ("weight decay 1e-4", {}, functools.partial(weight_decay, 1e-4)),
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
