"""The estimator's parameters, defined once: grouped, frozen settings.

Every parameter of :class:`~dimlearn.DeepInfomaxTransformer` is one field of one group below
(:class:`Objective`, :class:`Architecture`, :class:`Views`, :class:`Optimisation`,
:class:`Runtime`, :class:`Data`), made by :func:`setting` with its default, its
scikit-learn constraint, its documentation and how the command line carries it. From these
fields come the estimator's ``__init__`` and ``_parameter_constraints``, the Parameters
section of its docstring, the flags of ``dimlearn fit`` (and the list of Python-only
settings in its ``--help``) and the documentation's table of parameters. Adding a parameter
is one field here and the code that uses it.

The estimator keeps flat scikit-learn parameters (``get_params``, ``set_params``, ``clone``
and ``GridSearchCV`` see ``alpha``, not ``objective.alpha``); the code below it reads one
:class:`Settings`, built from them by :meth:`Settings.from_params`.

Examples
--------
>>> settings = Settings.from_params({**defaults(), "alpha": 0.5})
>>> settings.objective.alpha, settings.architecture.width
(0.5, 64)
>>> SETTINGS["alpha"].group, SETTINGS["alpha"].flag, SETTINGS["alpha"].help
('objective', '--alpha', 'weight of the global MI term')
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, Options, StrOptions

TERM_NAMES = ("global", "local", "prior", "local_local", "reconstruction")
"""The loss terms, in the order of their weights (:data:`WEIGHT_NAMES`)."""

WEIGHT_NAMES = ("alpha", "beta", "gamma", "delta", "reconstruction")
"""The estimator's parameters that weigh the terms of :data:`TERM_NAMES`, in their order."""


@dataclass(frozen=True)
class PythonOnly:
    """``cli=`` of a setting that ``dimlearn fit`` has no flag for, and why."""

    why: str


@dataclass(frozen=True)
class Setting:
    """One parameter of the estimator: what :func:`setting` recorded, with its name and
    group (filled in from the field it describes)."""

    name: str
    group: str
    default: object
    constraints: tuple
    kind: str
    doc: str
    help: str
    cli: bool | str | PythonOnly
    since: tuple | None = None

    @property
    def python_only(self) -> bool:
        """Whether the command line has no flag for it (:class:`PythonOnly`)."""
        return isinstance(self.cli, PythonOnly)

    @property
    def flag(self) -> str | None:
        """The flag of ``dimlearn fit`` that carries it, or None for Python-only settings."""
        if self.python_only:
            return None
        return self.cli if isinstance(self.cli, str) else "--" + self.name.replace("_", "-")

    def numpydoc(self) -> str:
        """Its entry in a numpydoc Parameters section."""
        head = f"{self.name} : {self.kind}, default={_shown(self.default)}"
        return head + "\n" + textwrap.indent(self.doc, "    ")


def _shown(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def setting(default, constraints, *, kind: str, doc: str, help: str, cli=True, since=None):
    """A field of a settings group: the parameter's default, its scikit-learn constraints
    (as ``_parameter_constraints`` takes them), ``kind`` (the type written in its docs),
    ``doc`` (its description in the estimator's docstring, numpydoc), ``help`` (one line,
    for ``dimlearn fit --help`` and the documentation's table) and ``cli``: True for a flag
    of ``dimlearn fit`` named after it, a string for a flag of another name, or
    :class:`PythonOnly` with the reason the command line has none. ``since``: the first
    dimlearn version whose model files and pickles always hold the parameter (None: 0.2's
    did); older ones are read with its default, or with what :mod:`dimlearn.upgrades` says
    that version did instead."""
    record = {
        "constraints": tuple(constraints),
        "kind": kind,
        "doc": textwrap.dedent(doc).strip("\n"),
        "help": help,
        "cli": cli,
        "since": since,
    }
    return field(default=default, metadata={"setting": record})


DEVICE_NAME = re.compile(r"auto|cpu|cuda|cuda:[0-9]{1,3}|mps")
"""The device names the ``device`` parameter takes (checked here, once; whether the device
is present is asked when a call runs, :func:`dimlearn.devices.resolve_device`)."""


class DeviceName(StrOptions):
    """The constraint of ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"``, exactly (a ``torch.device`` passes as its own constraint)."""

    def __init__(self):
        super().__init__({"auto", "cpu", "cuda", "cuda:N", "mps"})

    def is_satisfied_by(self, val):
        return isinstance(val, str) and DEVICE_NAME.fullmatch(val) is not None

    def __str__(self):
        return "a str among 'auto', 'cpu', 'cuda', 'cuda:N' (N a device index) or 'mps'"


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
"""The optimisers the ``optimizer`` parameter names (a model file stores these names)."""

OPTIMIZER_NAMES = tuple(OPTIMIZERS)

ROUTED_PREFIX = "optimizer__"
"""Parameters named ``optimizer__<keyword>`` are routed to the optimiser's constructor."""


def is_routed(name: str) -> bool:
    """Whether ``name`` is a parameter routed to the optimiser (``optimizer__<keyword>``).

    Examples
    --------
    >>> is_routed("optimizer__weight_decay"), is_routed("optimizer"), is_routed("alpha")
    (True, False, False)
    """
    return name.startswith(ROUTED_PREFIX) and name[len(ROUTED_PREFIX) :].isidentifier()


def routed(params: Mapping) -> dict:
    """The entries of ``params`` routed to the optimiser, by their full names."""
    return {name: value for name, value in params.items() if is_routed(name)}


class OptimizerClass(Options):
    """The constraint of ``optimizer`` besides its names: a ``torch.optim.Optimizer`` class
    (an ``Options`` only in form: scikit-learn takes constraints of its own kinds)."""

    def __init__(self):
        super().__init__(type, set())

    def is_satisfied_by(self, val):
        return isinstance(val, type) and issubclass(val, torch.optim.Optimizer)

    def __str__(self):
        return "a torch.optim.Optimizer subclass"


@dataclass(frozen=True)
class Objective:
    """What training maximises: the weights of the loss terms and how each is estimated."""

    alpha: object = setting(
        0.0,
        [Interval(Real, 0, None, closed="left")],
        kind="float",
        doc="""
        Weight of the global MI term (critic on a summary of the image and the code).
        """,
        help="weight of the global MI term",
    )
    beta: object = setting(
        1.0,
        [Interval(Real, 0, None, closed="left")],
        kind="float",
        doc="""
        Weight of the local MI term (critic on every position of the local feature map and
        the code, averaged over positions). On tabular data the "local map" is the encoder's
        first hidden layer, a single position.
        """,
        help="weight of the local MI term",
    )
    gamma: object = setting(
        0.1,
        [Interval(Real, 0, None, closed="left")],
        kind="float",
        doc="""
        Weight of the prior term, which pulls the codes towards N(0, I) (see ``prior``).
        0 switches the prior off.
        """,
        help="weight of the prior term (0: no prior)",
    )
    delta: object = setting(
        0.0,
        [Interval(Real, 0, None, closed="left")],
        kind="float",
        doc="""
        Weight of the local-local MI term (a further option of the DIM paper and the Keras
        reference): each position of the local map is contrasted, by a dot-product critic, with the
        other positions of its own image (positive) and with other images of the batch
        (negatives, as set by ``negatives``). Needs a local map of 2 or more positions, so
        images only.
        """,
        help="weight of the local-local MI term (images)",
    )
    reconstruction: object = setting(
        0.0,
        [Interval(Real, 0, None, closed="left")],
        kind="float",
        doc="""
        Table rows only: weight of a masked-feature reconstruction term (a self-prediction
        objective, as VIME's): each row's features are corrupted as in SCARF (30% of them
        replaced by other rows' values), encoded, and a small decoder trained with the
        encoder gives back the row's standardised values from the code mean (mean squared
        error). The decoder is kept in fitted models for continued fits only. With
        ``reconstruction > 0``, ``alpha`` and ``beta`` may both be 0 (a denoising
        autoencoder). Needs one view (``views=1`` or ``"auto"``).
        """,
        help="weight of masked-feature reconstruction (table rows)",
        since=(0, 4),
    )
    prior: object = setting(
        "kl_mean",
        [StrOptions({"adversarial", "kl", "kl_mean"})],
        kind='{"kl", "kl_mean", "adversarial"}',
        doc="""
        How the prior term (weight ``gamma``) matches codes to N(0, I). ``"kl"``: the KL
        divergence of the Gaussian code to N(0, I), summed over code dimensions (the VAE's
        and the Keras reference's text). ``"kl_mean"``: the same KL averaged over code dimensions
        (the Keras reference's code; ``latent_dim`` times weaker for the same ``gamma``).
        ``"adversarial"``: the DIM paper's prior matching, a discriminator trained to tell
        N(0, I) samples from codes and the encoder trained to fool it (non-saturating);
        one optimiser step updates both, the discriminator on detached codes.
        """,
        help="how the prior term matches codes to N(0, I)",
    )
    negatives: object = setting(
        "all",
        [StrOptions({"all", "shuffle"})],
        kind='{"shuffle", "all"}',
        doc="""
        Which mismatched pairs the critics see: for each code, one other image of the batch
        (``"shuffle"``, the Keras reference's) or all the other images of the batch
        (``"all"``, the DIM paper's; B - 1 negatives per code, cheap with ``critic="dot"``).
        """,
        help="mismatched pairs per code: one shuffled image, or all others of the batch",
    )
    critic: object = setting(
        "dot",
        [StrOptions({"concat", "dot"})],
        kind='{"concat", "dot"}',
        doc="""
        Critic form: an MLP scoring the concatenated pair (``"concat"``, the Keras
        reference's) or a dot product of separately embedded image and code (``"dot"``, the
        official DIM code's).
        With ``negatives="all"``, ``"concat"`` runs its MLP on all B x B pairs (and, for the
        local term, at every position): B times the cost of ``"dot"``.
        """,
        help="critic form: concatenate-and-score, or dot product of embeddings",
    )
    temperature: object = setting(
        None,
        [Interval(Real, 0, None, closed="neither"), None],
        kind="float or None",
        doc="""
        ``critic="dot"`` only: score a pair by the cosine of the two embeddings divided by
        ``temperature`` (normalised embeddings, as in SimCLR), so scores stay within
        ``1 / temperature``; None scores by the raw dot product.
        """,
        help="dot critics: score cosines over this temperature; none: raw dot products",
        since=(0, 3),
    )
    mi_estimator: object = setting(
        "infonce",
        [StrOptions({"dv", "infonce", "jsd"})],
        kind='{"jsd", "infonce", "dv"}',
        doc="""
        MI estimator: Jensen-Shannon (the Keras reference's), infoNCE or Donsker-Varadhan
        (the DIM paper's).
        """,
        help="MI estimator: Jensen-Shannon, infoNCE or Donsker-Varadhan",
    )

    @property
    def weights(self) -> dict[str, float]:
        """Each loss term's weight, by :data:`TERM_NAMES`."""
        values = (getattr(self, name) for name in WEIGHT_NAMES)
        return dict(zip(TERM_NAMES, values, strict=True))


@dataclass(frozen=True)
class Architecture:
    """The networks: the code's size, the encoder's and the critics' widths, the local maps."""

    latent_dim: object = setting(
        64,
        [Interval(Integral, 1, None, closed="left")],
        kind="int",
        doc="""
        Size of the code, the number of output features.
        """,
        help="code size, the number of output features",
    )
    width: object = setting(
        64,
        [Interval(Integral, 1, None, closed="left")],
        kind="int",
        doc="""
        Network width. The conv encoder has channels (w, 2w, 4w) and an fc layer of 16w
        units; the tabular encoder two hidden layers of 4w; the critics 8w hidden units.
        ``width=64`` is the reference DIM network (conv 64-128-256, fc 1024).
        """,
        help="network width (conv channels w, 2w, 4w; fc 16w)",
    )
    critic_width: object = setting(
        None,
        [Interval(Integral, 1, None, closed="left"), None],
        kind="int or None",
        doc="""
        Units of the critics' hidden layers and embeddings; None: ``8 * width`` (512 at
        ``width=64``). The local critic's 1x1 convolutions run at every position of the
        local map and cost as much arithmetic per image as the conv encoder at ``8 *
        width``: ``critic_width=4 * width`` trains about 30% more epochs in the same time
        (measured: the same quality at 5 CPU-minutes on CIFAR-10, and the time that pays
        for ``local_scales=2``).
        """,
        help="units of the critics' hidden layers; none: 8 x width",
        since=(0, 4),
    )
    local_scales: object = setting(
        1,
        [Interval(Integral, 1, 2, closed="both")],
        kind="{1, 2}",
        doc="""
        Images only: the maps the local term contrasts the code with. 1: the local map (the
        second conv layer's). 2: also the last conv layer's map, by a second local critic
        (the DIM paper's multi-scale form, simplified), the term the mean of the two. The
        second critic (``conv_local_critic``) is saved in model files only with
        ``include_training_state=True``, as the global critic. Measured on CIFAR-10 in 5
        CPU-minutes with ``critic_width=4 * width``: code 62.0 linear / 58.3 kNN-10 and
        conv level 65.1 against the defaults' 59.5 / 55.8 and 63.1 (Results: the next level
        on photos).
        """,
        help="local maps the code is contrasted with: 1 or 2 (images)",
        since=(0, 4),
    )
    tabular_encoder: object = setting(
        "tokens",
        [StrOptions({"mlp", "tokens"})],
        kind='{"tokens", "mlp"}',
        doc="""
        The encoder of tabular rows. ``"tokens"``: every feature is embedded on its own into
        ``width`` channels and is one position of the local map, so the local term contrasts
        the code with each feature (:class:`~dimlearn.networks.TokenEncoder`); ``"mlp"``:
        two hidden layers of ``4 * width`` units, the first of them a one-position local map
        (dimlearn 0.2's encoder). With ``"tokens"``, the two layers that read every
        feature's embedding at once (the encoder's fc layer and the global critic's
        summary) are bounded to 2**25 weights each (33.5 M): on wide tables (over 1,024
        features at ``width=64`` for the critic, 2,048 for the encoder) they read fewer
        channels per feature (the encoder through a 1x1 projection shared by all
        features: 26 channels of 64 at 5,000 features), so the networks have 68 M and
        65 M weights at 5,000 and 20,000 features, not 248 M and 987 M (a fitted model
        keeps 35 M and 34 M). Past 2**25 / (8 * width) features (65,536 at
        ``width=64``) ``fit`` refuses with a ``ValueError``: lower ``width``, use
        ``"mlp"`` or reduce the features. Narrower tables keep the networks they had.
        """,
        help="encoder of table rows: a token per feature, or an MLP",
        since=(0, 3),
    )

    encoder: object = setting(
        "auto",
        [StrOptions({"auto"}), callable],
        kind='"auto", torch.nn.Module subclass or function',
        doc="""
        The encoder. ``"auto"``: dimlearn's, the conv encoder for images
        (:class:`~dimlearn.networks.ConvEncoder`) and ``tabular_encoder``'s for table rows.
        Else a ``torch.nn.Module`` subclass or a factory of one, called as
        ``encoder(in_channels=C, height=H, width_px=W, latent_dim=latent_dim,
        width=width)`` for images and ``encoder(n_features=F, latent_dim=latent_dim,
        width=width)`` for table rows (weights drawn from torch's global generator, which
        ``random_state`` seeds). The module's ``forward(x)`` takes a standardised batch,
        ``(B, C, H, W)`` or ``(B, F)``, and returns ``(local_map, mu, logvar)``: the
        local map ``(B, c, h, w)`` that the local critic reads, and the code's mean and
        log-variance, ``(B, latent_dim)`` each; it has ``local_shape`` (``(c, h, w)``) and
        ``feature_dims`` (``{"code": latent_dim}`` and, for other ``feature_level`` values,
        their widths with a method ``features(x, level)``), and for ``local_scales=2``
        ``with_conv_map(x)`` (``(local_map, conv_map, mu, logvar)``) and ``conv_shape``.
        ``fit`` checks all this right after building it, before training, with an error
        that names what is missing (:func:`dimlearn.networks.check_encoder`). Subclassing
        :class:`~dimlearn.networks.ConvEncoder` gives all of it. Such a model pickles
        (joblib) and saves with skops (pass the encoder's class among ``trusted``), but
        :func:`dimlearn.save` refuses it: a model file can rebuild dimlearn's networks only.
        """,
        help='the encoder: dimlearn\'s ("auto"), or a module class or factory of your own',
        cli=PythonOnly("an encoder of your own is Python code"),
        since=(0, 4),
    )

    @property
    def critic_hidden(self) -> int:
        """Width of the critics' hidden layers and embeddings: ``critic_width``, or
        ``8 * width`` where it is None."""
        return 8 * self.width if self.critic_width is None else self.critic_width


@dataclass(frozen=True)
class Views:
    """What the networks see of each training sample: augmentation and views."""

    augment: object = setting(
        False,
        ["boolean"],
        kind="bool",
        doc="""
        Images, one view (``views=1``) only: a random crop (after reflection padding by an
        eighth of the side) and a random horizontal flip of every training image, drawn anew
        each epoch (the Keras reference's multi-scale idea in its simplest form); the flip
        only where ``flip`` resolves to True. Refused (``fit`` raises ``ValueError``) when
        training uses two views, which are augmented already.
        """,
        help="random crops and flips of one view (--views 1)",
    )
    views: object = setting(
        "auto",
        [Interval(Integral, 1, 2, closed="both"), StrOptions({"auto"})],
        kind='{"auto", 1, 2}',
        doc="""
        Views of each training sample. ``"auto"``: 2 for images, 1 for table rows (what
        won on each in the benchmarks of the documentation's Results). 2 trains the way
        AMDIM (Bachman et al. 2019) does: every batch is seen as two independently augmented
        views, and the code of each view is contrasted with the local map of the other, so
        the code keeps what survives the augmentation (the object rather than its colour or
        position). Images: random crop and flip, colour jitter and random greyscale; table
        rows: SCARF's corruption of 30% of the features by other rows' values. A step then
        costs two encoder passes.
        """,
        help="views of each image per step: auto (2 for images), 1 or 2",
        since=(0, 3),
    )
    flip: object = setting(
        "auto",
        [StrOptions({"auto"}), "boolean"],
        kind='{"auto", True, False}',
        doc="""
        Images: whether the augmented views (two views, or ``augment=True``) are mirrored
        left to right at random, half of them. ``"auto"``: for colour images, not for
        one-channel ones, where a mirror can change what an image is (digits, letters:
        without flips kNN-10 on MNIST rose from 95.7 to 98.0, Fashion-MNIST stayed level;
        the documentation's Results). True on table rows is refused.
        """,
        help="mirror augmented images at random: auto (colour images yes, grey no), true or false",
        since=(0, 4),
    )
    augmentation: object = setting(
        None,
        [callable, None],
        kind="function or None",
        doc="""
        The augmentation, as a function ``augmentation(batch, generator, part, flip)``
        returning one view of a standardised training batch, of the same shape: ``batch``
        is ``(B, C, H, W)`` images or ``(B, F)`` table rows on the training device;
        ``generator`` is the training call's ``torch.Generator`` on that device (draw from
        it, and the fit stays reproducible with ``random_state``); ``part`` is None, or in
        data-parallel training which rows of the whole batch these are (see
        :func:`dimlearn.views.random_crop_flip` for how to draw for the whole batch);
        ``flip`` is what the ``flip`` parameter resolved to. It is called once per view:
        twice per batch with two views, once with ``augment=True``; held-out batches are
        never augmented. None: dimlearn's, :func:`dimlearn.views.image_view` (crop, flip,
        colour jitter, greyscale) for two views of images,
        :func:`dimlearn.views.random_crop_flip` for ``augment=True``, and SCARF's
        :func:`dimlearn.views.corrupt_rows` for two views of table rows. One view without
        ``augment`` augments nothing, so ``fit`` refuses a function there.
        :func:`dimlearn.save` refuses a model holding a function (set it back to None
        first: it acts in training only); pickles and skops keep it.
        """,
        help="the augmentation, a function of a batch returning a view",
        cli=PythonOnly("an augmentation of your own is Python code"),
        since=(0, 4),
    )


@dataclass(frozen=True)
class Optimisation:
    """How long and how training steps: epochs, time budget, batches, optimiser, early stopping."""

    max_epochs: object = setting(
        20,
        [Interval(Integral, 1, None, closed="left")],
        kind="int",
        doc="""
        Passes over the training data (per ``fit`` call; ``partial_fit`` runs one).
        """,
        help="passes over the images",
    )
    max_time: object = setting(
        None,
        [Interval(Real, 0, None, closed="neither"), None],
        kind="float or None",
        doc="""
        Time budget for training, in seconds. Training stops at the end of the first epoch
        after which the next one (predicted to take as long as the last) would overrun it,
        and, when one epoch alone is longer than the budget, at the end of the batch that
        reaches it (the cut epoch is counted, with its ``epoch_fraction`` in ``history_``).
        The pass over X that computes the input statistics comes before the budget starts.
        None trains for ``max_epochs``.
        """,
        help="time budget for training, seconds",
    )
    batch_size: object = setting(
        128,
        [Interval(Integral, 2, None, closed="left")],
        kind="int",
        doc="""
        Samples per training step; an epoch is cut into ``ceil(n / batch_size)`` batches of
        nearly equal size, so no sample is dropped and no batch is of one sample.
        """,
        help="images per training step",
    )
    optimizer: object = setting(
        "adam",
        [StrOptions(set(OPTIMIZER_NAMES)), OptimizerClass()],
        kind='{"adam", "adamw", "sgd"} or torch.optim.Optimizer subclass',
        doc="""
        The optimiser: ``torch.optim.Adam``, ``AdamW`` or ``SGD`` by name, or a
        ``torch.optim.Optimizer`` class, built with the learning rate ``lr``. Keyword
        arguments of its constructor are routed to it as in skorch, by parameters named
        ``optimizer__<name>``: ``DeepInfomaxTransformer(optimizer="adamw",
        optimizer__weight_decay=1e-4)``, ``optimizer__betas=(0.9, 0.99)``; they are
        parameters of the estimator (``get_params``, ``set_params``, ``clone``,
        ``GridSearchCV``; as in skorch, ``set_params`` cannot remove one). ``fit`` refuses
        a keyword the class does not take, and
        ``optimizer__lr`` (the learning rate is ``lr``), before training. A continued fit
        (``warm_start``, ``partial_fit``) keeps the optimiser's state (Adam's moments) and
        refuses another optimiser class than the one it holds the state of. Model files
        store the name (``torch.optim.AdamW`` given as a class too: ``"adamw"``) and the
        routed keywords (numbers, strings, tuples of them); another class pickles and
        saves with skops, and :func:`dimlearn.save` refuses it.
        """,
        help="the optimiser",
        cli=PythonOnly("the command trains with Adam"),
        since=(0, 4),
    )
    lr: object = setting(
        0.001,
        [Interval(Real, 0, None, closed="neither")],
        kind="float",
        doc="""
        The optimiser's learning rate. Every training call (``fit``, ``partial_fit``) uses
        the current value: a continued fit keeps the optimiser's state (Adam's moments), not
        the learning rate the last call ended with.
        """,
        help="the learning rate",
    )
    lr_schedule: object = setting(
        "constant",
        [StrOptions({"constant", "cosine"})],
        kind='{"constant", "cosine"}',
        doc="""
        ``"cosine"`` anneals the learning rate from ``lr`` to 0 along a half cosine, batch
        by batch, after a linear warm-up over the first 100 batches: over ``max_time`` when
        it is set (the rate reaches its end as the time runs out; the schedule then depends
        on the machine's speed), else over ``max_epochs``. Each ``fit`` starts again from
        ``lr``; ``partial_fit`` always trains at ``lr``.
        """,
        help="learning rate: constant, or cosine annealing to 0",
    )
    early_stopping: object = setting(
        False,
        ["boolean"],
        kind="bool",
        doc="""
        Hold out ``validation_fraction`` of the training data, compute the same weighted
        objective on it after every epoch (``valid_loss`` in ``history_``), stop once it has
        not improved by ``tol`` for ``n_iter_no_change`` epochs, and go back to the best
        epoch: its weights, Adam's state, ``history_``, ``loss_curve_`` and ``n_iter_``
        all describe that epoch (its history entry records ``epochs_after_best`` and their
        ``valid_loss_after_best``). The held-out rows are drawn with ``random_state`` and are
        not trained on.
        """,
        help="hold out --validation-fraction of the images; stop when they stop improving",
    )
    validation_fraction: object = setting(
        0.1,
        [Interval(Real, 0, 1, closed="neither")],
        kind="float",
        doc="""
        Share of the training data held out for ``early_stopping``.
        """,
        help="share held out for --early-stopping",
    )
    n_iter_no_change: object = setting(
        10,
        [Interval(Integral, 1, None, closed="left")],
        kind="int",
        doc="""
        Epochs without improvement before ``early_stopping`` stops training.
        """,
        help="epochs without improvement before --early-stopping stops",
    )
    tol: object = setting(
        0.0001,
        [Interval(Real, 0, None, closed="left")],
        kind="float",
        doc="""
        Least decrease of the held-out objective that counts as an improvement.
        """,
        help="least improvement that counts for --early-stopping",
    )
    warm_start: object = setting(
        False,
        ["boolean"],
        kind="bool",
        doc="""
        If True and the estimator is fitted, ``fit`` continues training the fitted networks
        (and Adam's moments) on the new X, at the current ``lr``, instead of starting
        afresh. The input standardisation of the first fit is kept, so features stay
        comparable; the new X must have the same per-sample shape, and ``latent_dim``,
        ``width`` and ``critic`` must not change in between. Critics of terms whose weight
        was 0 are not kept after a fit; turning such a term on for a continued fit trains a
        new, randomly initialised critic next to the fitted encoder (with a warning).
        """,
        help="continue training the fitted networks in the next fit",
        cli=PythonOnly("each dimlearn fit trains a new model"),
    )


@dataclass(frozen=True)
class Runtime:
    """Where and how training runs: device, arithmetic, processes, randomness, output."""

    device: object = setting(
        "auto",
        [DeviceName(), torch.device],
        kind="str",
        doc="""
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
        ``"mps"`` (Apple's GPU, where torch has it); any other name is refused by the
        parameter's constraint, a device that is not there by ``fit``. The fitted model is
        kept on the CPU, so a model fitted on a GPU loads and transforms anywhere;
        ``transform`` falls back to the CPU with a warning if the device is gone.
        ``transform`` and ``score`` keep a copy of the networks on an accelerator between
        calls (never pickled) and use batches of 4096 there (512 on the CPU).
        """,
        help="auto, cpu, cuda, cuda:N or mps",
    )
    precision: object = setting(
        "auto",
        [StrOptions({"auto", "bfloat16", "float16", "float32"})],
        kind='{"auto", "float32", "bfloat16", "float16"}',
        doc="""
        Arithmetic of the training step: mixed precision autocasts the networks' forward
        pass (float16 with a gradient scaler); the MI estimators and the prior are computed
        in float32 either way, and ``transform`` always runs in float32. bfloat16 also runs
        on CPUs; float16 needs CUDA. ``"auto"``: for images, bfloat16 where the device
        computes it natively (a CPU with AVX512-BF16 or AMX, a GPU that supports it: about
        twice the steps per second), else float32; float32 for table rows. With ``"auto"``
        the numbers a ``random_state`` gives depend on the machine's instructions
        (``precision_`` says what ran). ``"float32"`` removes that choice; float32 results
        are still bit-identical only for one machine and thread count, and agree to float32
        rounding across vector widths (AVX2, AVX-512), which sum in another order.
        """,
        help="arithmetic of a step; auto: bfloat16 where the device has it natively, else float32",
    )
    data_on_device: object = setting(
        "auto",
        [StrOptions({"auto"}), "boolean"],
        kind='{"auto", True, False}',
        doc="""
        Copy the whole training set (in its stored dtype: CIFAR-10's 50k images are 150 MB
        as uint8) to the device once and draw every batch there. ``"auto"``: on CUDA when it
        takes at most half of the free device memory; never on the CPU (where it would be a
        second copy of X). Otherwise batches are read from X and copied one by one, from
        page-locked memory on CUDA.
        """,
        help="copy the training images to the device once: auto (CUDA, if they fit), true or false",
    )
    compile: object = setting(
        False,
        ["boolean"],
        kind="bool",
        doc="""
        ``torch.compile`` the networks (skorch's ``compile``): slower to start, faster per
        step on a GPU. The fitted ``module_`` is the plain module either way.
        """,
        help="torch.compile the networks (slower start, faster steps on a GPU)",
    )
    distributed: object = setting(
        "auto",
        [StrOptions({"auto"}), "boolean"],
        kind='"auto" or bool',
        doc="""
        Data-parallel training across processes (``torchrun``; the user guide's page "More
        than one machine"). ``"auto"``: when torchrun started this process into an initialised
        ``torch.distributed`` process group of more than one process (``RANK`` and
        ``WORLD_SIZE`` are its rank and size there, ``LOCAL_RANK`` is set) and ``fit``
        runs in the main thread, ``fit`` and ``partial_fit`` train one model together with
        every process of it, each on its part of every batch, with the objective, batches
        and random draws of one process (``batch_size`` is the whole batch); every process
        must pass the same X and ends with the same fitted estimator. ``device="cuda"`` then
        means each process's own GPU (``LOCAL_RANK``). A group that other code set up, or a
        fit in another thread (threaded joblib, dask threads), leaves ``"auto"`` training
        alone, with a warning. ``True``: data-parallel with any initialised group, from any
        thread, one fit at a time per group, and an error when there is none. ``False``:
        each process trains alone. If one process's fit fails, the others' end with an
        error that names it, within the group's timeout (the ``timeout`` of
        ``init_process_group``), and the group is destroyed.
        """,
        help="data-parallel training with the processes torchrun started",
        cli=PythonOnly("data-parallel training is started from Python under torchrun"),
    )
    random_state: object = setting(
        None,
        ["random_state"],
        kind="int, RandomState instance or None",
        doc="""
        Seeds weight initialisation, shuffling, negatives and code sampling. With an int,
        fitting on the CPU is bit-for-bit reproducible (for a fixed torch thread count).
        torch's global RNG is left as it was. Each training call draws its seed from the
        stream ``random_state_``, which continued fits carry on.
        """,
        help="seed of weights, batches and draws",
        cli="--seed",
    )
    verbose: object = setting(
        0,
        ["verbose"],
        kind="int",
        doc="""
        0 is silent; 1 or more prints the per-epoch loss table and a progress bar.
        """,
        help="0 is silent; 1 prints a progress bar and the loss per epoch",
    )
    callbacks: object = setting(
        None,
        [list, None],
        kind="list of skorch callbacks or None",
        doc="""
        skorch callbacks run beside dimlearn's own in every training call, as skorch's
        ``NeuralNet`` takes them: ``skorch.callbacks.Callback`` instances (named after their
        class) or ``(name, callback)`` pairs. The instances themselves are used (skorch
        calls their ``initialize()`` at the start of each call), so they keep what they
        saw. Their methods get the skorch net: ``net.module_`` is the whole module
        (``net.module_.encoder`` the encoder), ``net.optimizer_`` the optimiser and
        ``net.history`` the history of this training call only (a continued fit's earlier
        epochs are in ``history_``, their count in ``net.epochs_before``). They run after
        dimlearn's callbacks that score and schedule, before those that stop training (so
        they see every batch and epoch that ends, the one a time budget or a Ctrl-C stops
        at included, and their ``on_train_end`` comes before ``early_stopping`` restores
        the best epoch), in every process of data-parallel training. A name of dimlearn's
        own (:data:`dimlearn.callbacks.RESERVED_NAMES`) is refused before training.
        :func:`dimlearn.save` refuses a model holding callbacks (set them back to None
        first: they act in training only); pickles and skops keep them.
        """,
        help="skorch callbacks run beside dimlearn's own",
        cli=PythonOnly("callbacks are Python objects"),
        since=(0, 4),
    )


@dataclass(frozen=True)
class Data:
    """How X is read, and what ``transform`` returns."""

    feature_level: object = setting(
        "code",
        [StrOptions({"code", "conv", "fc"})],
        kind='{"code", "fc", "conv"}',
        doc="""
        What ``transform`` returns, the DIM paper's three levels: the code mean
        (``latent_dim`` wide), the fc layer before it (16w; 4w for tabular data), or the last
        conv layer, flattened (4w x h/8 x w/8; the first hidden layer for tabular data). It
        only reads the fitted network, so it may be changed after ``fit``.
        """,
        help="what transform returns: the code, the fc layer or the last conv layer",
    )
    image_shape: object = setting(
        None,
        [None, tuple, list],
        kind="tuple of int or None",
        doc="""
        For flat 2-D input only: the shape of one image, ``(H, W)``, ``(H, W, C)`` or
        ``(C, H, W)``, such that ``X.reshape(n, *image_shape)`` gives the images. None means
        2-D input is tabular.
        """,
        help="the shape of one image, for flat 2-D input",
        cli=PythonOnly("the command reads image files, whose shape it knows"),
    )
    image_layout: object = setting(
        "auto",
        [StrOptions({"auto", "channels_first", "channels_last"})],
        kind='{"auto", "channels_last", "channels_first"}',
        doc="""
        Where the channels of 3-D samples are. ``"auto"`` reads a last axis of at most 4
        (with a first axis above 4) as channels-last and the reverse as channels-first, and
        refuses anything else rather than guess.
        """,
        help="where the channels of 3-D samples are",
        cli=PythonOnly("the command reads image files as (n, H, W, C)"),
    )


GROUPS = {
    "objective": Objective,
    "architecture": Architecture,
    "views": Views,
    "optimisation": Optimisation,
    "runtime": Runtime,
    "data": Data,
}
"""The groups, by the name a :class:`Settings` holds each under, in the order of the docs."""


def _settings() -> dict[str, Setting]:
    found = {}
    for group, cls in GROUPS.items():
        for f in fields(cls):
            found[f.name] = Setting(
                name=f.name, group=group, default=f.default, **f.metadata["setting"]
            )
    return found


SETTINGS: Mapping[str, Setting] = _settings()
"""Every parameter of the estimator by name, in the order of the docs."""


def defaults() -> dict:
    """Every parameter's default, by name."""
    return {name: s.default for name, s in SETTINGS.items()}


def parameter_constraints() -> dict:
    """The estimator's ``_parameter_constraints``."""
    return {name: list(s.constraints) for name, s in SETTINGS.items()}


def parameters_doc() -> str:
    """The estimator's numpydoc Parameters section (heading included)."""
    entries = "\n".join(s.numpydoc() for s in SETTINGS.values())
    return "Parameters\n----------\n" + entries


@dataclass(frozen=True)
class Settings:
    """The estimator's parameters as one frozen object of groups, read by everything below
    the estimator (the builders, the net, the training call) instead of a parameter dict by
    string key or a long list of keyword arguments."""

    objective: Objective
    architecture: Architecture
    views: Views
    optimisation: Optimisation
    runtime: Runtime
    data: Data
    optimizer_options: Mapping = field(default_factory=dict)
    """The keywords routed to the optimiser's constructor (``optimizer__<keyword>``
    parameters), by keyword."""

    @classmethod
    def from_params(cls, params: Mapping) -> Settings:
        """The settings of ``DeepInfomaxTransformer.get_params()`` (other keys are ignored,
        but for those routed to the optimiser; a missing one is a ``KeyError``)."""
        return cls(
            **{
                group: kind(**{f.name: params[f.name] for f in fields(kind)})
                for group, kind in GROUPS.items()
            },
            optimizer_options={
                name[len(ROUTED_PREFIX) :]: value for name, value in routed(params).items()
            },
        )

    def params(self) -> dict:
        """The flat parameters these settings hold, by name (routed ones included)."""
        flat = {
            f.name: getattr(getattr(self, group), f.name)
            for group, kind in GROUPS.items()
            for f in fields(kind)
        }
        flat.update({ROUTED_PREFIX + key: value for key, value in self.optimizer_options.items()})
        return flat


def estimator_init():
    """An ``__init__`` that stores every setting given (or its default), and every keyword
    routed to the optimiser (``optimizer__<keyword>``, as skorch's ``NeuralNet`` takes
    them), as an attribute of the same name and nothing else, as scikit-learn asks; its
    signature lists the settings as keyword-only parameters, which is what scikit-learn's
    ``get_params`` reads (the estimator's own adds the routed ones; a ``**`` parameter in
    the signature would fail scikit-learn's checks, which pass every name it lists)."""
    names = tuple(SETTINGS)
    initial = defaults()

    def __init__(self, **params):
        unknown = sorted(name for name in params if name not in initial and not is_routed(name))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}"
            )
        for name in names:
            setattr(self, name, params.get(name, initial[name]))
        for name, value in routed(params).items():
            setattr(self, name, value)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    __init__.__signature__ = inspect.Signature(
        [self_param]
        + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=initial[name])
            for name in names
        ]
    )
    return __init__


def with_parameters(doc: str) -> str:
    """A class docstring (indented by 4) with :func:`parameters_doc` put before its
    Attributes section."""
    marker = "\n    Attributes\n    ----------\n"
    if marker not in doc:
        raise ValueError("the docstring has no Attributes section to put the Parameters before")
    head, tail = doc.split(marker, 1)
    section = textwrap.indent(parameters_doc(), "    ")
    return f"{head.rstrip()}\n\n{section}\n{marker}{tail}"
