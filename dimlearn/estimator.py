"""The scikit-learn face of dimlearn: parameters, validation, fit / transform, tags."""

from __future__ import annotations

import dataclasses
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import fitted
from .config import ADDED_SINCE_0_2, ADDED_SINCE_0_3, TrainingConfig
from .devices import on_device, resolve_device
from .distributed import training_ranks
from .fitted import FittedState
from .inference import encode, local_mi_score
from .infomax import module_from_state
from .inputs import ArrayBatches, channel_stats, resolve_layout
from .training import train_networks

_TRANSFORM_BATCH = 512
_TRANSFORM_BATCH_ACCELERATOR = 4096
_PICKLE_FORMAT = 2
"""The form of a pickled estimator: 2 (dimlearn 0.3) holds plain values and arrays only; a
pickle without it (dimlearn 0.2) holds torch modules with biases before their BatchNorm
layers, which unpickling folds away."""


def _upgrade_0_2_pickle(state: dict) -> None:
    """Turn a dimlearn 0.2 pickle's state into this version's, in place: its networks
    rebuilt without the biases before BatchNorm layers (folded into the running means, the
    same codes up to rounding), their Adam moments dropped."""
    module, folded = module_from_state(
        TrainingConfig.from_params(state), state["layout_"], state["module_"].state_dict()
    )
    state["module_"] = module
    state.update(views_=1, precision_=state["precision"], device_=None)  # 0.2 had no "auto"
    state.update(flip_=state["layout_"].kind == "image")  # 0.2 mirrored every augmented image
    moments = state.get("_optimizer_state")
    if moments is not None:
        state["_optimizer_state"] = {k: v for k, v in moments.items() if k not in folded}


_SKLEARN_STATE = frozenset({"_sklearn_version", "_sklearn_output_config"})
"""What scikit-learn may keep in an estimator's ``__dict__`` besides the parameters: the
version that ``BaseEstimator.__getstate__`` writes (for scikit-learn's own classes since
1.3, for every estimator before, so in pickles of dimlearn 0.2) and ``set_output``'s choice."""


SCORE_BATCH = 128
"""Batch size of :meth:`DeepInfomaxTransformer.score`: each code is told apart from up to
127 other images, so the score is at most ``log(128)`` = 4.85 nats."""


class DeepInfomaxTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Unsupervised features by Deep InfoMax: a conv encoder trained to maximise mutual
    information between its inputs and their codes.

    ``fit`` trains an encoder, a global critic and a local critic jointly (through skorch) on
    ``alpha * global MI + beta * local MI + gamma * prior (+ delta * local-local MI,
    + reconstruction * masked-feature reconstruction on table rows)`` with a
    reparameterised Gaussian code. The Keras reference's objective (Jensen-Shannon
    estimator, one shuffled in-batch negative, concatenate-and-score critics, KL summed over
    code dimensions; see References) is available through ``negatives``, ``critic``,
    ``mi_estimator`` and ``prior``; the defaults use the DIM paper's stronger choices and a
    light prior.
    ``transform`` returns the code mean, a ``latent_dim``-wide float32 feature vector.

    Inputs may be images, ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)``, in uint8 or
    float; flat images ``(n, H*W*C)`` with ``image_shape`` given; or any other 2-D numeric
    data, whose rows get the feature-token encoder (``tabular_encoder``). Every input is
    standardised per channel (images) or per feature (tabular rows) with the mean and
    standard deviation of the data passed to ``fit``, inside the estimator, identically in
    ``fit`` and ``transform``; no external scaling is needed, and uint8 and float images of
    the same pictures give the same model.

    Parameters
    ----------
    alpha : float, default=0.0
        Weight of the global MI term (critic on a summary of the image and the code).
    beta : float, default=1.0
        Weight of the local MI term (critic on every position of the local feature map and
        the code, averaged over positions). On tabular data the "local map" is the encoder's
        first hidden layer, a single position.
    gamma : float, default=0.1
        Weight of the prior term, which pulls the codes towards N(0, I) (see ``prior``).
        0 switches the prior off.
    delta : float, default=0.0
        Weight of the local-local MI term (a further option of the DIM paper and the Keras
        reference): each position of the local map is contrasted, by a dot-product critic, with the
        other positions of its own image (positive) and with other images of the batch
        (negatives, as set by ``negatives``). Needs a local map of 2 or more positions, so
        images only.
    reconstruction : float, default=0.0
        Table rows only: weight of a masked-feature reconstruction term (a self-prediction
        objective, as VIME's): each row's features are corrupted as in SCARF (30% of them
        replaced by other rows' values), encoded, and a small decoder trained with the
        encoder gives back the row's standardised values from the code mean (mean squared
        error). The decoder is kept in fitted models for continued fits only. With
        ``reconstruction > 0``, ``alpha`` and ``beta`` may both be 0 (a denoising
        autoencoder). Needs one view (``views=1`` or ``"auto"``).
    prior : {"kl", "kl_mean", "adversarial"}, default="kl_mean"
        How the prior term (weight ``gamma``) matches codes to N(0, I). ``"kl"``: the KL
        divergence of the Gaussian code to N(0, I), summed over code dimensions (the VAE's
        and the Keras reference's text). ``"kl_mean"``: the same KL averaged over code dimensions
        (the Keras reference's code; ``latent_dim`` times weaker for the same ``gamma``).
        ``"adversarial"``: the DIM paper's prior matching, a discriminator trained to tell
        N(0, I) samples from codes and the encoder trained to fool it (non-saturating);
        one optimiser step updates both, the discriminator on detached codes.
    negatives : {"shuffle", "all"}, default="all"
        Which mismatched pairs the critics see: for each code, one other image of the batch
        (``"shuffle"``, the Keras reference's) or all the other images of the batch
        (``"all"``, the DIM paper's; B - 1 negatives per code, cheap with ``critic="dot"``).
    critic : {"concat", "dot"}, default="dot"
        Critic form: an MLP scoring the concatenated pair (``"concat"``, the Keras
        reference's) or a dot product of separately embedded image and code (``"dot"``, the
        official DIM code's).
        With ``negatives="all"``, ``"concat"`` runs its MLP on all B x B pairs (and, for the
        local term, at every position): B times the cost of ``"dot"``.
    temperature : float or None, default=None
        ``critic="dot"`` only: score a pair by the cosine of the two embeddings divided by
        ``temperature`` (normalised embeddings, as in SimCLR), so scores stay within
        ``1 / temperature``; None scores by the raw dot product.
    mi_estimator : {"jsd", "infonce", "dv"}, default="infonce"
        MI estimator: Jensen-Shannon (the Keras reference's), infoNCE or Donsker-Varadhan
        (the DIM paper's).
    latent_dim : int, default=64
        Size of the code, the number of output features.
    width : int, default=64
        Network width. The conv encoder has channels (w, 2w, 4w) and an fc layer of 16w
        units; the tabular encoder two hidden layers of 4w; the critics 8w hidden units.
        ``width=64`` is the reference DIM network (conv 64-128-256, fc 1024).
    critic_width : int or None, default=None
        Units of the critics' hidden layers and embeddings; None: ``8 * width`` (512 at
        ``width=64``). The local critic's 1x1 convolutions run at every position of the
        local map and cost as much arithmetic per image as the conv encoder at ``8 *
        width``: ``critic_width=4 * width`` trains about 30% more epochs in the same time
        (measured: the same quality at 5 CPU-minutes on CIFAR-10, and the time that pays
        for ``local_scales=2``).
    local_scales : {1, 2}, default=1
        Images only: the maps the local term contrasts the code with. 1: the local map (the
        second conv layer's). 2: also the last conv layer's map, by a second local critic
        (the DIM paper's multi-scale form, simplified), the term the mean of the two. The
        second critic (``conv_local_critic``) is saved in model files only with
        ``include_training_state=True``, as the global critic. Measured on CIFAR-10 in 5
        CPU-minutes with ``critic_width=4 * width``: code 62.0 linear / 58.3 kNN-10 and
        conv level 65.1 against the defaults' 59.5 / 55.8 and 63.1 (Results: the next level
        on photos).
    tabular_encoder : {"tokens", "mlp"}, default="tokens"
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
    feature_level : {"code", "fc", "conv"}, default="code"
        What ``transform`` returns, the DIM paper's three levels: the code mean
        (``latent_dim`` wide), the fc layer before it (16w; 4w for tabular data), or the last
        conv layer, flattened (4w x h/8 x w/8; the first hidden layer for tabular data). It
        only reads the fitted network, so it may be changed after ``fit``.
    image_shape : tuple of int or None, default=None
        For flat 2-D input only: the shape of one image, ``(H, W)``, ``(H, W, C)`` or
        ``(C, H, W)``, such that ``X.reshape(n, *image_shape)`` gives the images. None means
        2-D input is tabular.
    image_layout : {"auto", "channels_last", "channels_first"}, default="auto"
        Where the channels of 3-D samples are. ``"auto"`` reads a last axis of at most 4
        (with a first axis above 4) as channels-last and the reverse as channels-first, and
        refuses anything else rather than guess.
    augment : bool, default=False
        Images, one view (``views=1``) only: a random crop (after reflection padding by an
        eighth of the side) and a random horizontal flip of every training image, drawn anew
        each epoch (the Keras reference's multi-scale idea in its simplest form); the flip
        only where ``flip`` resolves to True. Refused (``fit`` raises ``ValueError``) when
        training uses two views, which are augmented already.
    views : {"auto", 1, 2}, default="auto"
        Views of each training sample. ``"auto"``: 2 for images, 1 for table rows (what
        won on each in the benchmarks of the documentation's Results). 2 trains the way
        AMDIM (Bachman et al. 2019) does: every batch is seen as two independently augmented
        views, and the code of each view is contrasted with the local map of the other, so
        the code keeps what survives the augmentation (the object rather than its colour or
        position). Images: random crop and flip, colour jitter and random greyscale; table
        rows: SCARF's corruption of 30% of the features by other rows' values. A step then
        costs two encoder passes.
    flip : {"auto", True, False}, default="auto"
        Images: whether the augmented views (two views, or ``augment=True``) are mirrored
        left to right at random, half of them. ``"auto"``: for colour images, not for
        one-channel ones, where a mirror can change what an image is (digits, letters:
        without flips kNN-10 on MNIST rose from 95.7 to 98.0, Fashion-MNIST stayed level;
        the documentation's Results). True on table rows is refused.
    max_epochs : int, default=20
        Passes over the training data (per ``fit`` call; ``partial_fit`` runs one).
    max_time : float or None, default=None
        Time budget for training, in seconds. Training stops at the end of the first epoch
        after which the next one (predicted to take as long as the last) would overrun it,
        and, when one epoch alone is longer than the budget, at the end of the batch that
        reaches it (the cut epoch is counted, with its ``epoch_fraction`` in ``history_``).
        The pass over X that computes the input statistics comes before the budget starts.
        None trains for ``max_epochs``.
    batch_size : int, default=128
        Samples per training step; an epoch is cut into ``ceil(n / batch_size)`` batches of
        nearly equal size, so no sample is dropped and no batch is of one sample.
    lr : float, default=1e-3
        Adam learning rate. Every training call (``fit``, ``partial_fit``) uses the current
        value: a continued fit keeps Adam's moments, not the learning rate the last call
        ended with.
    lr_schedule : {"constant", "cosine"}, default="constant"
        ``"cosine"`` anneals the learning rate from ``lr`` to 0 along a half cosine, batch
        by batch, after a linear warm-up over the first 100 batches: over ``max_time`` when
        it is set (the rate reaches its end as the time runs out; the schedule then depends
        on the machine's speed), else over ``max_epochs``. Each ``fit`` starts again from
        ``lr``; ``partial_fit`` always trains at ``lr``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, compute the same weighted
        objective on it after every epoch (``valid_loss`` in ``history_``), stop once it has
        not improved by ``tol`` for ``n_iter_no_change`` epochs, and go back to the best
        epoch: its weights, Adam's state, ``history_``, ``loss_curve_`` and ``n_iter_``
        all describe that epoch (its history entry records ``epochs_after_best`` and their
        ``valid_loss_after_best``). The held-out rows are drawn with ``random_state`` and are
        not trained on.
    validation_fraction : float, default=0.1
        Share of the training data held out for ``early_stopping``.
    n_iter_no_change : int, default=10
        Epochs without improvement before ``early_stopping`` stops training.
    tol : float, default=1e-4
        Least decrease of the held-out objective that counts as an improvement.
    warm_start : bool, default=False
        If True and the estimator is fitted, ``fit`` continues training the fitted networks
        (and Adam's moments) on the new X, at the current ``lr``, instead of starting
        afresh. The input standardisation of the first fit is kept, so features stay
        comparable; the new X must have the same per-sample shape, and ``latent_dim``,
        ``width`` and ``critic`` must not change in between. Critics of terms whose weight
        was 0 are not kept after a fit; turning such a term on for a continued fit trains a
        new, randomly initialised critic next to the fitted encoder (with a warning).
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        The fitted model is kept on the CPU, so a model fitted on a GPU loads and transforms
        anywhere; ``transform`` falls back to the CPU with a warning if the device is gone.
        ``transform`` and ``score`` keep a copy of the networks on an accelerator between
        calls (never pickled) and use batches of 4096 there (512 on the CPU).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
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
    data_on_device : {"auto", True, False}, default="auto"
        Copy the whole training set (in its stored dtype: CIFAR-10's 50k images are 150 MB
        as uint8) to the device once and draw every batch there. ``"auto"``: on CUDA when it
        takes at most half of the free device memory; never on the CPU (where it would be a
        second copy of X). Otherwise batches are read from X and copied one by one, from
        page-locked memory on CUDA.
    compile : bool, default=False
        ``torch.compile`` the networks (skorch's ``compile``): slower to start, faster per
        step on a GPU. The fitted ``module_`` is the plain module either way.
    distributed : "auto" or bool, default="auto"
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
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, negatives and code sampling. With an int,
        fitting on the CPU is bit-for-bit reproducible (for a fixed torch thread count).
        torch's global RNG is left as it was. Each training call draws its seed from the
        stream ``random_state_``, which continued fits carry on.
    verbose : int, default=0
        0 is silent; 1 or more prints the per-epoch loss table and a progress bar.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained encoder, the local critic (which ``score`` reads) and the critics of the
        terms with a weight above 0 (on the CPU, in eval mode).
    history_ : skorch.History
        Per-epoch records: ``train_loss`` and each active term (``train_global``,
        ``train_local``, ``train_prior``), with epoch durations. An epoch cut short by a
        time budget or a Ctrl-C has ``epoch_fraction`` (and ``stopped_by_time`` or
        ``interrupted``).
    loss_curve_ : list of float
        ``train_loss`` per epoch, over all ``fit`` calls that continued one another
        (``warm_start``, ``partial_fit``).
    n_iter_ : int
        Epochs run, over those same calls (an epoch cut short counts as one).
    random_state_ : numpy.random.RandomState
        The stream each training call draws its seed from.
    precision_ : {"float32", "bfloat16", "float16"} or None
        The precision the last training call ran in (what ``precision="auto"`` resolved
        to). A continued fit keeps it while ``precision`` is ``"auto"``. None for a model
        read from a file of dimlearn 0.3.0 fitted with ``"auto"``, which did not record it.
    views_ : {1, 2}
        The views per sample the last training call trained (what ``views="auto"``
        resolved to); kept by a continued fit while ``views`` is ``"auto"``.
    flip_ : bool
        Whether the last training call mirrored augmented images (what ``flip="auto"``
        resolved to; False for table rows); kept by a continued fit while ``flip`` is
        ``"auto"``. Models of dimlearn 0.3.0 and older mirrored every augmented image.
    device_ : str or None
        The device the last training call ran on (``"cpu"``, ``"cuda:0"``, ...); None where
        an older file does not say. ``history_`` holds all four for every epoch.
    input_mean_, input_scale_ : ndarray
        Per-channel (or per-feature) statistics used to standardise inputs.
    sample_shape_ : tuple
        Shape of one sample seen in ``fit``; ``transform`` insists on the same.
    layout_ : dimlearn.inputs.Layout
        How a sample is read: image or tabular, its image shape and where the channels are
        (what :func:`dimlearn.training.build_module` builds the networks from).
    n_features_in_ : int
        Values per sample (``prod(sample_shape_)``).
    feature_names_in_ : ndarray of str
        Column names, when ``fit`` got a DataFrame with string column names.

    See Also
    --------
    dimlearn.save, dimlearn.load : model files that are safe to share (safetensors + JSON).

    Notes
    -----
    Faults: a loss that is not finite stops training at once with
    :class:`~dimlearn.NonFiniteLossError` (a first fit leaves the estimator unfitted, a
    continued one as it was); a Ctrl-C stops training at the end of the running batch and
    ``fit`` returns the model trained so far, with a warning. Memory-mapped input
    (``np.load(path, mmap_mode="r")``) is read a batch at a time in ``fit``,
    ``partial_fit``, ``transform`` and ``score``, never copied whole.

    Why these defaults: they gave the best features per minute of training measured so far
    on CIFAR-10 with 2 CPU cores (``benchmarks/results/cifar10_variants.md`` and
    ``cifar10_options.md``: 10k images, 200 s per model). Local MI alone (``alpha=0,
    beta=1``, the DIM paper's DIM(L)), all other images of the batch as negatives,
    dot-product critics and the infoNCE estimator reach 52.2% linear / 45.2% kNN-10 on the
    codes, against 32.8 / 29.9 for the Keras reference's form (``alpha=0.5, beta=1, gamma=0.1,
    prior="kl", negatives="shuffle", critic="concat", mi_estimator="jsd"``, still one
    ``set_params`` away) and 36.9 / 38.4 for PCA. A light prior, the KL averaged over code
    dimensions with ``gamma=0.1``, kept the linear probe (51.6 vs 51.8) and lifted kNN-10
    (48.1 vs 45.0); the same KL summed over dimensions, or the adversarial prior, at
    ``gamma=0.1``, cost 14-18 points. ``latent_dim=64`` and ``width=64`` are the DIM
    paper's network; ``batch_size=128`` and ``lr=1e-3`` its and the Keras reference's optimiser
    settings.

    References
    ----------
    R. D. Hjelm et al., "Learning deep representations by mutual information estimation and
    maximization", ICLR 2019, arXiv:1808.06670.

    The Keras reference: Su Jianlin's 2018 blog post on Deep InfoMax ("Deep INFOMAX",
    kexue.fm, 2 October 2018) and its Keras code (github.com/bojone/infomax). Its objective,
    as the post writes it: ``alpha`` x global + ``beta`` x local Jensen-Shannon MI with one
    shuffled in-batch negative and concatenate-and-score critics, plus ``gamma`` x the KL
    of the code to N(0, I). Elsewhere in dimlearn "the Keras reference" means this.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from dimlearn import DeepInfomaxTransformer
    >>> X, y = load_digits(return_X_y=True)
    >>> dim = DeepInfomaxTransformer(image_shape=(8, 8), max_epochs=1, width=8, random_state=0)
    >>> dim.fit_transform(X[:200]).shape
    (200, 64)
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "delta": [Interval(Real, 0, None, closed="left")],
        "reconstruction": [Interval(Real, 0, None, closed="left")],
        "prior": [StrOptions({"kl", "kl_mean", "adversarial"})],
        "negatives": [StrOptions({"shuffle", "all"})],
        "critic": [StrOptions({"concat", "dot"})],
        "temperature": [Interval(Real, 0, None, closed="neither"), None],
        "mi_estimator": [StrOptions({"jsd", "infonce", "dv"})],
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "width": [Interval(Integral, 1, None, closed="left")],
        "critic_width": [Interval(Integral, 1, None, closed="left"), None],
        "local_scales": [Interval(Integral, 1, 2, closed="both")],
        "tabular_encoder": [StrOptions({"tokens", "mlp"})],
        "feature_level": [StrOptions({"code", "fc", "conv"})],
        "image_shape": [None, tuple, list],
        "image_layout": [StrOptions({"auto", "channels_last", "channels_first"})],
        "augment": ["boolean"],
        "views": [Interval(Integral, 1, 2, closed="both"), StrOptions({"auto"})],
        "flip": [StrOptions({"auto"}), "boolean"],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "max_time": [Interval(Real, 0, None, closed="neither"), None],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "lr_schedule": [StrOptions({"constant", "cosine"})],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
        "data_on_device": [StrOptions({"auto"}), "boolean"],
        "compile": ["boolean"],
        "distributed": [StrOptions({"auto"}), "boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        alpha: float = 0.0,
        beta: float = 1.0,
        gamma: float = 0.1,
        delta: float = 0.0,
        reconstruction: float = 0.0,
        prior: str = "kl_mean",
        negatives: str = "all",
        critic: str = "dot",
        temperature: float | None = None,
        mi_estimator: str = "infonce",
        latent_dim: int = 64,
        width: int = 64,
        critic_width: int | None = None,
        local_scales: int = 1,
        tabular_encoder: str = "tokens",
        feature_level: str = "code",
        image_shape: tuple | None = None,
        image_layout: str = "auto",
        augment: bool = False,
        views: int | str = "auto",
        flip: bool | str = "auto",
        max_epochs: int = 20,
        max_time: float | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        lr_schedule: str = "constant",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-4,
        warm_start: bool = False,
        device: str = "auto",
        precision: str = "auto",
        data_on_device="auto",
        compile: bool = False,
        distributed="auto",
        random_state=None,
        verbose: int = 0,
    ):
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.delta = delta
        self.reconstruction = reconstruction
        self.prior = prior
        self.negatives = negatives
        self.critic = critic
        self.temperature = temperature
        self.mi_estimator = mi_estimator
        self.latent_dim = latent_dim
        self.width = width
        self.critic_width = critic_width
        self.local_scales = local_scales
        self.tabular_encoder = tabular_encoder
        self.feature_level = feature_level
        self.image_shape = image_shape
        self.image_layout = image_layout
        self.augment = augment
        self.views = views
        self.flip = flip
        self.max_epochs = max_epochs
        self.max_time = max_time
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.device = device
        self.precision = precision
        self.data_on_device = data_on_device
        self.compile = compile
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose

    # -- input checks ---------------------------------------------------------------------

    def _validate_input(self, X, *, reset: bool) -> np.ndarray:
        """Validated array of X, in its own dtype, with the per-sample shape checked."""
        if not hasattr(X, "shape") and not hasattr(X, "__array__"):
            X = np.asarray(X)
        ndim = getattr(X, "ndim", 2)
        if ndim > 2:
            if not reset:
                self._check_sample_shape(X.shape[1:])
            sample_shape = tuple(X.shape[1:])
            X = np.reshape(np.asarray(X), (X.shape[0], -1))
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype="numeric",
            ensure_all_finite=True,
            ensure_min_samples=2 if reset else 1,
        )
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X must hold real numbers; got dtype {X.dtype}.")
        if ndim > 2:
            X = X.reshape(X.shape[0], *sample_shape)
        elif not reset:
            self._check_sample_shape(X.shape[1:])
        return X

    def _check_sample_shape(self, sample_shape) -> None:
        if tuple(sample_shape) != self.sample_shape_:
            raise ValueError(
                f"X has samples of shape {tuple(sample_shape)}, but {type(self).__name__} was "
                f"fitted on samples of shape {self.sample_shape_}. Pass arrays shaped like "
                "the training data, or refit."
            )

    # -- fit / transform ------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the encoder and critics on X by Deep InfoMax.

        With ``warm_start=True`` and a fitted estimator, training continues from the fitted
        state; otherwise it starts from new random weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W[, C]), (n_samples, C, H, W) or (n_samples, F)
            Images (uint8 or float) or tabular rows. NaN and inf are refused.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : DeepInfomaxTransformer
            The fitted estimator.

        Examples
        --------
        >>> import numpy as np
        >>> from dimlearn import DeepInfomaxTransformer
        >>> X = np.random.default_rng(0).random((64, 8, 8))
        >>> dim = DeepInfomaxTransformer(max_epochs=2, width=4, latent_dim=8, random_state=0)
        >>> dim.fit(X).n_iter_, len(dim.history_)
        (2, 2)
        """
        continued = self.warm_start and hasattr(self, "module_")
        return self._train(X, max_epochs=self.max_epochs, continued=continued)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """One epoch of training on X, continuing from the fitted state if there is one.

        The first call fits the input standardisation on its X (as ``fit`` does); later
        calls keep it and go on training the same networks and optimiser on new data, which
        must have the same per-sample shape. Every row of X is trained on: ``early_stopping``
        holds nothing out here (it needs several epochs in one call), and every call trains at
        ``lr`` (``lr_schedule`` acts within a ``fit``).

        Parameters
        ----------
        X : array-like, as for ``fit``
        y : None
            Ignored.

        Returns
        -------
        self : DeepInfomaxTransformer
            The estimator, trained one epoch more.

        Examples
        --------
        >>> import numpy as np
        >>> from dimlearn import DeepInfomaxTransformer
        >>> stream = np.random.default_rng(0).random((3, 64, 8, 8))  # three chunks of data
        >>> dim = DeepInfomaxTransformer(width=4, latent_dim=8, random_state=0)
        >>> for chunk in stream:
        ...     dim = dim.partial_fit(chunk)
        >>> dim.n_iter_
        3
        """
        return self._train(X, max_epochs=1, continued=hasattr(self, "module_"), partial=True)

    def _train(self, X, *, max_epochs: int, continued: bool, partial: bool = False):
        ranks = training_ranks(self.distributed)
        device = resolve_device(self.device, strict=True)
        if ranks is not None:
            device = ranks.device(device)
        previous = FittedState.of(self) if continued else None
        rng = self._training_rng(previous)
        rng_before = rng.get_state()
        try:
            state = self._trained(X, previous, rng, device, ranks, max_epochs, partial)
        except BaseException:
            # never keep a half-trained or NaN model: a first fit ends unfitted, a
            # continued one exactly as it was before the call
            rng.set_state(rng_before)
            if previous is None:
                fitted.clear(self)
            raise
        state.random_state = rng
        state.write_to(self)
        return self

    def _trained(self, X, previous, rng, device, ranks, max_epochs, partial) -> FittedState:
        """The fitted state after one training call on X (the estimator is not changed
        but for the input checks' ``n_features_in_`` and ``feature_names_in_``)."""
        X = self._validate_input(X, reset=previous is None)
        if previous is None:
            layout = resolve_layout(X.shape[1:], self.image_shape, self.image_layout)
        else:
            layout = previous.layout
            if len(X) < 2:
                raise ValueError(
                    f"Found array with {len(X)} sample(s); training needs at least 2 "
                    "(a batch of one has no negatives)."
                )
        # "auto" choices made (a continued model keeps its own) and impossible
        # combinations refused, before any training
        params = self.get_params()
        for name, value in (previous.chosen if previous is not None else {}).items():
            if name != "device" and params[name] == "auto" and value is not None:
                params[name] = value
        config = TrainingConfig.from_params(params).resolved(layout, device)
        chosen = {
            "precision": config.precision,
            "views": config.views,
            "flip": config.flip,
            "device": str(device),
        }
        if partial:  # one epoch a call, on a stream: no schedule within it
            config = dataclasses.replace(config, lr_schedule="constant")
        seed = int(rng.randint(np.iinfo(np.int32).max))
        if ranks is not None:  # rank 0's, once every process is known to hold the same X
            seed = ranks.agree(seed, X)
        train_rows, valid_rows = (None, None) if partial else self._split_rows(len(X), seed)
        if previous is None:
            stats = channel_stats(X, layout)
        else:
            stats = (previous.input_mean, previous.input_scale)
        run = train_networks(
            ArrayBatches(X, layout, *stats, rows=train_rows),
            None if valid_rows is None else ArrayBatches(X, layout, *stats, valid_rows),
            config,
            seed=seed,
            device=device,
            max_epochs=max_epochs,
            fitted=previous,
            ranks=ranks,
        )
        for entry in run.history:  # what this call's epochs ran with
            entry.update(chosen)
        if previous is not None:
            return previous.continued_by(run.module, run.optimizer_state, run.history, **chosen)
        return FittedState(
            module=run.module,
            history=run.history,
            loss_curve=fitted.loss_curve(run.history),
            n_iter=len(run.history),
            input_mean=stats[0],
            input_scale=stats[1],
            sample_shape=tuple(X.shape[1:]),
            layout=layout,
            n_features_in=self.n_features_in_,
            feature_names_in=getattr(self, "feature_names_in_", None),
            optimizer_state=run.optimizer_state,
            **chosen,
        )

    def _training_rng(self, previous: FittedState | None) -> np.random.RandomState:
        """The RNG stream that seeds each training call, kept as ``random_state_``."""
        if previous is None:
            return check_random_state(self.random_state)
        if previous.random_state is not None:
            return previous.random_state
        # a model loaded without its training state: a stream of its own, not a replay
        if isinstance(self.random_state, Integral):
            entropy = [int(self.random_state), int(previous.n_iter)]
            return np.random.RandomState(np.random.SeedSequence(entropy).generate_state(1))
        return check_random_state(self.random_state)

    def _split_rows(self, n: int, seed: int):
        """Training and held-out rows for ``early_stopping`` (all rows and None without)."""
        if not self.early_stopping:
            return None, None
        n_valid = int(round(self.validation_fraction * n))
        if n_valid < 2 or n - n_valid < 2:
            raise ValueError(
                f"early_stopping with validation_fraction={self.validation_fraction} splits "
                f"{n} samples into {n - n_valid} for training and {n_valid} held out; each "
                "part needs at least 2. Pass more samples, change validation_fraction, or "
                "set early_stopping=False."
            )
        order = np.random.default_rng(seed).permutation(n)
        return np.sort(order[n_valid:]), np.sort(order[:n_valid])

    def transform(self, X) -> np.ndarray:
        """Features of X (by default the code means), float32, computed in batches.

        Parameters
        ----------
        X : array-like shaped like the training data (same per-sample shape)

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), float32
            ``n_features_out`` is ``latent_dim`` for ``feature_level="code"``.

        Examples
        --------
        >>> import numpy as np
        >>> from dimlearn import DeepInfomaxTransformer
        >>> X = np.random.default_rng(0).random((64, 8, 8))
        >>> dim = DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=8, random_state=0)
        >>> codes = dim.fit(X).transform(X)
        >>> codes.shape, codes.dtype
        ((64, 8), dtype('float32'))
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        dataset = ArrayBatches(X, self.layout_, self.input_mean_, self.input_scale_)
        device = resolve_device(self.device, strict=False)
        batch = _TRANSFORM_BATCH if device.type == "cpu" else _TRANSFORM_BATCH_ACCELERATOR
        return encode(self._module_on(device), dataset, batch, device, self.feature_level)

    def score(self, X, y=None) -> float:
        """Held-out local mutual information between images and their codes, in nats.

        The infoNCE lower bound on I(C(x); E(x)), read by the model's own local critic: X is
        cut, in order, into batches of about :data:`~dimlearn.estimator.SCORE_BATCH` (128);
        each code mean is scored against every position of its own image's local map and of
        every other image in its batch, and the score is ``log(batch size)`` minus the
        infoNCE loss, averaged over codes and positions. Higher is better; 0 is chance; the
        ceiling is ``log(128)`` = 4.85. Its form is fixed: it does not depend on ``alpha``,
        ``beta``, ``gamma``, ``delta``, ``prior`` or the ``mi_estimator``, ``negatives`` and
        ``batch_size`` used in training, so ``GridSearchCV`` can compare models across them
        without labels. It is deterministic (no code sampling).

        What it measures is how well a code identifies its own image's local features among
        other images', the quantity DIM maximises. Models trained with ``beta=0`` never
        train the local critic and score near 0, whatever their codes are worth. It is not
        class separability: when labels exist, score the downstream task instead (a
        ``Pipeline`` ending in a classifier, or ``scoring=`` in ``GridSearchCV``).

        Parameters
        ----------
        X : array-like shaped like the training data, at least 2 samples
            Held-out data: on the training data the bound is optimistic.
        y : None
            Ignored.

        Returns
        -------
        score : float
            The bound, in nats: 0 for codes that tell nothing, at most ``log(128)``.

        Examples
        --------
        >>> import math
        >>> from sklearn.datasets import load_digits
        >>> from dimlearn import DeepInfomaxTransformer
        >>> images = load_digits().images
        >>> dim = DeepInfomaxTransformer(max_epochs=2, width=4, latent_dim=8, random_state=0)
        >>> nats = dim.fit(images[:500]).score(images[500:700])  # held-out images
        >>> bool(nats < math.log(128))  # in nats: about 0 after 2 small epochs
        True
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        if len(X) < 2:
            raise ValueError(
                f"score needs at least 2 samples (each code is told apart from the other "
                f"images); got {len(X)}."
            )
        dataset = ArrayBatches(X, self.layout_, self.input_mean_, self.input_scale_)
        device = resolve_device(self.device, strict=False)
        return local_mi_score(self._module_on(device), dataset, SCORE_BATCH, device)

    def _module_on(self, device):
        """The fitted networks on ``device``: ``module_`` itself on the CPU, elsewhere a copy
        kept between calls (until ``module_`` changes; never pickled)."""
        cached = self.__dict__.get("_device_copy")
        if cached is not None and cached[0] == device and cached[1] is self.module_:
            return cached[2]
        module = on_device(self.module_, device)
        if module is not self.module_:
            self._device_copy = (device, self.module_, module)
        return module

    def __getstate__(self):
        """The parameters and the fitted state as plain Python values and numpy arrays
        (:meth:`dimlearn.fitted.FittedState.to_plain`): no torch or skorch object, so that
        ``skops.io`` can store a fitted estimator (and a ``Pipeline`` around it) safely."""
        state = dict(super().__getstate__())  # a copy: object's is the instance's own dict
        for name in [*fitted.ATTRIBUTES.values(), *fitted.CACHES]:
            state.pop(name, None)
        if self.__sklearn_is_fitted__():
            state["_fitted"] = FittedState.of(self).to_plain(include_training_state=True)
        state["_pickle_format"] = _PICKLE_FORMAT
        return state

    def __setstate__(self, state):
        """Rebuild from :meth:`__getstate__`'s state, or from a pickle of dimlearn 0.2.

        A pickle or a skops file may come from anyone, so the state is read as untrusted:
        only the estimator's parameters, the fitted state (``_fitted``, rebuilt and
        checked field by field by :meth:`dimlearn.fitted.FittedState.from_plain`) and
        scikit-learn's own bookkeeping are accepted, the parameters are validated, and
        anything else (a key that would replace a method, say) is refused with a
        ``ValueError`` before the estimator changes.
        """
        if not isinstance(state, dict):
            raise ValueError(f"A pickled {type(self).__name__} holds a dict, not a {type(state)}")
        state = dict(state)
        version = state.pop("_pickle_format", None)
        plain = state.pop("_fitted", None)
        allowed = set(self._get_param_names()) | _SKLEARN_STATE
        if version is None:  # dimlearn 0.2 pickled its __dict__: parameters, fitted objects
            for name, value in ADDED_SINCE_0_2.items():
                state.setdefault(name, value)
            allowed |= {fitted.ATTRIBUTES[f] for f in fitted.ATTRIBUTES if f not in fitted.RESOLVED}
        elif not isinstance(version, int) or version > _PICKLE_FORMAT:
            raise ValueError(
                f"This DeepInfomaxTransformer was pickled by a newer dimlearn (pickle format "
                f"{version!r}; this dimlearn reads up to {_PICKLE_FORMAT}). Upgrade dimlearn "
                "to unpickle it, or save models with dimlearn.save to share them."
            )
        else:  # dimlearn 0.3.0 and on: what it lacked
            for name, value in ADDED_SINCE_0_3.items():
                state.setdefault(name, value)
        unknown = sorted(map(repr, set(state) - allowed))
        missing = sorted(set(self._get_param_names()) - set(state))
        if unknown or missing:
            problem = f"unknown attributes {', '.join(unknown)}" if unknown else ""
            problem += ("; " if unknown and missing else "") + (
                f"no value for the parameters {missing}" if missing else ""
            )
            raise ValueError(
                f"This pickled {type(self).__name__} is not one that dimlearn wrote: "
                f"{problem}. Refit the model, or share it as a dimlearn.save model file."
            )
        output_config = state.get("_sklearn_output_config", {})
        if not (
            isinstance(output_config, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in output_config.items())
        ):
            raise ValueError(f"This pickled {type(self).__name__} has a malformed output config")
        if version is None and "module_" in state:
            _upgrade_0_2_pickle(state)
        probe = type(self)(**{name: state[name] for name in self._get_param_names()})
        probe._validate_params()  # sklearn's InvalidParameterError is a ValueError
        config = TrainingConfig.from_params(probe.get_params())
        try:
            rebuilt = None if plain is None else FittedState.from_plain(plain, config)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise ValueError(
                f"This pickled {type(self).__name__}'s fitted state makes no sense ({problem}); "
                "it was edited or damaged. Refit, or share models as dimlearn.save files."
            ) from None
        super().__setstate__(state)
        if rebuilt is not None:
            rebuilt.write_to(self)

    @property
    def _n_features_out(self) -> int:
        return self.module_.encoder.feature_dims[self.feature_level]

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "module_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
