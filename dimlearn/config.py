"""The settings of the networks and of training, read once from the estimator's parameters.

The estimator builds one :class:`TrainingConfig` per training call (and one when a model is
rebuilt from a file or a pickle); everything below it (the module builder, the skorch net,
the training call) reads typed, frozen attributes instead of a parameter dict by string key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

TERM_NAMES = ("global", "local", "prior", "local_local")
"""The loss terms, in the order of their weights ``alpha, beta, gamma, delta``."""


ADDED_SINCE_0_2 = {"views": 1, "temperature": None, "tabular_encoder": "mlp"}
"""Parameters that dimlearn 0.2 did not have, with the values that behave as 0.2 did: what a
model file or a pickle of 0.2 is read with (not today's defaults)."""


@dataclass(frozen=True)
class TrainingConfig:
    """What the estimator's parameters say about the networks and about training.

    The fields are the estimator's parameters of the same names (see
    :class:`~dimlearn.DeepInfomaxTransformer` for each); the parameters that only the
    estimator reads (input layout, device, early-stopping split, random state, ...) are not
    here. Build it with :meth:`from_params`.

    Examples
    --------
    >>> from dimlearn import DeepInfomaxTransformer
    >>> config = TrainingConfig.from_params(DeepInfomaxTransformer(alpha=0.5).get_params())
    >>> config.weights
    {'global': 0.5, 'local': 1.0, 'prior': 0.1, 'local_local': 0.0}
    """

    alpha: float
    beta: float
    gamma: float
    delta: float
    prior: str
    negatives: str
    critic: str
    temperature: float | None
    mi_estimator: str
    latent_dim: int
    width: int
    tabular_encoder: str
    augment: bool
    views: int
    max_time: float | None
    batch_size: int
    lr: float
    lr_schedule: str
    n_iter_no_change: int
    tol: float
    precision: str
    data_on_device: object
    compile: bool
    verbose: int

    @classmethod
    def from_params(cls, params: Mapping) -> TrainingConfig:
        """The config of ``DeepInfomaxTransformer.get_params()`` (other keys are ignored)."""
        return cls(**{field.name: params[field.name] for field in fields(cls)})

    @property
    def weights(self) -> dict[str, float]:
        """Each loss term's weight, by :data:`TERM_NAMES`."""
        values = (self.alpha, self.beta, self.gamma, self.delta)
        return dict(zip(TERM_NAMES, values, strict=True))

    @property
    def critic_hidden(self) -> int:
        """Width of the critics' hidden layers and embeddings: ``8 * width``."""
        return 8 * self.width
