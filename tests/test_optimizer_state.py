"""The optimiser: its state by parameter name (it survives a module gaining or losing a
part), the ``optimizer`` parameter and the keywords routed to it, and continued fits."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback
from torch import nn

from dimlearn import DeepInfomaxTransformer, ModelFileError, load, save
from dimlearn.optimizer_state import named_optimizer_state, set_named_optimizer_state
from tests.conftest import small_images


def trained(module):
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    module(torch.ones(3, 2)).sum().backward()
    optimizer.step()
    return optimizer


def test_named_state_goes_to_a_module_of_other_parts_by_name():
    torch.manual_seed(0)
    first = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    state = named_optimizer_state(trained(first), first)
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    second = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1), nn.Linear(1, 1))
    optimizer = torch.optim.Adam(second.parameters(), lr=0.5)
    fresh = set_named_optimizer_state(optimizer, second, state)
    assert fresh == ["2.weight", "2.bias"]  # the new part starts afresh
    weight = second[0].weight
    torch.testing.assert_close(optimizer.state[weight]["exp_avg"], state["0.weight"]["exp_avg"])
    assert optimizer.param_groups[0]["lr"] == 0.5  # its own hyperparameters stay


def test_parameters_without_a_gradient_have_no_state():
    module = nn.Sequential(nn.Linear(2, 1), nn.Linear(2, 1))
    optimizer = torch.optim.Adam(module.parameters())
    module[0](torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert set(named_optimizer_state(optimizer, module)) == {"0.weight", "0.bias"}


# -- the optimizer parameter: a class, keywords routed to it, continued fits -------------------


class SeenOptimizer(Callback):
    """Records the class and the first parameter group of the optimiser a fit trains with."""

    def on_train_begin(self, net, **kwargs):
        group = net.optimizer_.param_groups[0]
        self.seen = (type(net.optimizer_), {k: v for k, v in group.items() if k != "params"})


def test_the_optimizer_is_built_with_lr_and_the_routed_keywords(fast):
    seen = SeenOptimizer()
    dim = DeepInfomaxTransformer(
        **fast,
        optimizer="adamw",
        optimizer__weight_decay=0.25,
        optimizer__betas=(0.8, 0.9),
        lr=0.004,
        callbacks=[seen],
    )
    dim.fit(small_images(n=32))
    cls, group = seen.seen
    assert cls is torch.optim.AdamW
    assert group["weight_decay"] == 0.25 and group["betas"] == (0.8, 0.9) and group["lr"] == 0.004
    assert dim._optimizer_name == "adamw"


def test_routed_keywords_are_parameters_for_clone_set_params_and_grid_search(fast):
    dim = DeepInfomaxTransformer(**fast, optimizer="sgd", optimizer__momentum=0.9)
    assert dim.get_params()["optimizer__momentum"] == 0.9
    assert clone(dim).get_params() == dim.get_params()
    dim.set_params(optimizer__momentum=0.5, optimizer__nesterov=True, width=3)
    assert (dim.optimizer__momentum, dim.optimizer__nesterov, dim.width) == (0.5, True, 3)
    assert "optimizer__momentum=0.5" in repr(dim)
    with pytest.raises(ValueError, match="Invalid parameter 'optimiser'"):
        dim.set_params(optimiser__momentum=0.1)
    search = GridSearchCV(
        DeepInfomaxTransformer(**dict(fast, max_epochs=1), optimizer="adamw"),
        {"optimizer__weight_decay": [0.0, 0.1]},
        cv=2,
    ).fit(small_images(n=40))
    assert search.best_params_.keys() == {"optimizer__weight_decay"}
    assert search.best_estimator_.optimizer__weight_decay in (0.0, 0.1)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(optimizer="sgd", optimizer__betas=(0.9, 0.99)), "SGD.*takes no keyword 'betas'"),
        (dict(optimizer__lr=0.1), "optimizer__lr.*Set lr instead"),
    ],
)
def test_keywords_the_optimizer_does_not_take_are_refused_before_training(fast, params, message):
    dim = DeepInfomaxTransformer(**fast, **params)
    with pytest.raises(ValueError, match=message):
        dim.fit(small_images(n=16))
    assert not hasattr(dim, "module_")


def test_an_adam_class_trains_as_its_name_and_continues_its_fit(fast):
    X = small_images(n=32)
    by_name = DeepInfomaxTransformer(**fast).fit(X)
    by_class = DeepInfomaxTransformer(**fast, optimizer=torch.optim.Adam).fit(X)
    assert np.array_equal(by_name.transform(X), by_class.transform(X))
    by_name.set_params(optimizer=torch.optim.Adam).partial_fit(X)  # the same class
    assert by_name.n_iter_ == 3


def test_a_continued_fit_keeps_the_state_of_its_optimizer_and_refuses_another(fast):
    X = small_images(n=32)
    dim = DeepInfomaxTransformer(**fast, optimizer="sgd", optimizer__momentum=0.9).fit(X)
    assert dim._optimizer_name == "sgd"
    assert all(set(moments) == {"momentum_buffer"} for moments in dim._optimizer_state.values())
    dim.set_params(warm_start=True).fit(X)  # SGD's momentum carried on
    codes = dim.transform(X)
    for other in ("adam", torch.optim.NAdam):
        dim.set_params(optimizer=other)
        with pytest.raises(ValueError, match="fitted optimiser state, which is 'sgd'"):
            dim.fit(X)
        with pytest.raises(ValueError, match="Set optimizer back to the fitted one"):
            dim.partial_fit(X)
        assert dim.n_iter_ == 4 and np.array_equal(dim.transform(X), codes)  # unchanged


def test_an_optimizer_class_of_its_own_pickles_but_is_no_model_file(fast, tmp_path):
    X = small_images(n=32)
    dim = DeepInfomaxTransformer(**fast, optimizer=torch.optim.NAdam).fit(X)
    assert dim._optimizer_name == "torch.optim.nadam.NAdam"
    copy = pickle.loads(pickle.dumps(dim))
    assert copy.optimizer is torch.optim.NAdam
    assert np.array_equal(copy.transform(X), dim.transform(X))
    copy.set_params(warm_start=True).fit(X)  # its state goes on with it
    with pytest.raises(ModelFileError, match="not one of dimlearn's .*joblib or skops"):
        save(dim, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_model_files_keep_the_optimizer_by_name_and_its_routed_keywords(fast, tmp_path):
    X = small_images(n=32)
    dim = DeepInfomaxTransformer(
        **fast, optimizer=torch.optim.AdamW, optimizer__betas=(0.8, 0.9), optimizer__amsgrad=True
    ).fit(X)
    loaded = load(save(dim, tmp_path / "m.safetensors", include_training_state=True))
    params = loaded.get_params()
    assert params["optimizer"] == "adamw"  # the class, by its name
    assert params["optimizer__betas"] == (0.8, 0.9) and params["optimizer__amsgrad"] is True
    assert loaded._optimizer_name == "adamw"
    with pytest.raises(ValueError, match="which is 'adamw'"):
        loaded.set_params(optimizer="adam").partial_fit(X)
    loaded.set_params(optimizer="adamw").partial_fit(X)
    betas = (torch.tensor(0.9), torch.tensor(0.99))
    unsaved = DeepInfomaxTransformer(**fast, optimizer__betas=betas).fit(X)
    with pytest.raises(ModelFileError, match="optimizer__betas=.* not a number, a string"):
        save(unsaved, tmp_path / "n.safetensors")
