"""scikit-learn's own estimator checks, on 2-D input (the tabular encoder)."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from dimlearn import DeepInfomaxTransformer


@parametrize_with_checks(
    [DeepInfomaxTransformer(max_epochs=2, width=4, latent_dim=3, random_state=0)]
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
