"""Offline intersphinx inventories: the names these docs link to in other projects' docs.

intersphinx normally downloads each project's ``objects.inv`` when the site is built. The
machines this project is built on may reach package registries only, so the build does
not download anything: this file lists, for each project, the names that the pages and
docstrings link to, with the address of that name on the project's real site, and
:func:`write_inventories` writes them as ``objects.inv`` files (with ``sphobjinv``) that
intersphinx reads from disk. The links in the built site go to the real sites.

``docs/conf.py`` calls :func:`write_inventories` on every build. By hand::

    python docs/inventories.py                  # write them into docs/_build/inventories
    python docs/inventories.py --check          # online: compare every entry with the
                                                # project's real objects.inv

A reference to a name missing here is a build warning (the build is ``nitpicky``), so
``-W`` fails until the name is added. To add one, find its address on the project's site
(with internet: ``python -m sphobjinv suggest https://numpy.org/doc/stable/ numpy.load -u``
prints the real inventory's entry) and add a line below; ``$`` in an address stands for
the name, as in objects.inv files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# project: (base address of its documentation, [(domain:role, name, address), ...])
PROJECTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "python": (
        "https://docs.python.org/3/",
        [
            ("py:data", "None", "library/constants.html#$"),
            ("py:data", "True", "library/constants.html#$"),
            ("py:data", "False", "library/constants.html#$"),
            ("std:term", "sequence", "glossary.html#term-sequence"),
            ("std:term", "iterable", "glossary.html#term-iterable"),
            ("std:term", "path-like object", "glossary.html#term-path-like-object"),
            ("py:class", "str", "library/stdtypes.html#$"),
            ("py:class", "int", "library/functions.html#$"),
            ("py:class", "float", "library/functions.html#$"),
            ("py:class", "bool", "library/functions.html#$"),
            ("py:class", "dict", "library/stdtypes.html#$"),
            ("py:class", "list", "library/stdtypes.html#$"),
            ("py:class", "tuple", "library/stdtypes.html#$"),
            ("py:exception", "ValueError", "library/exceptions.html#$"),
            ("py:exception", "TypeError", "library/exceptions.html#$"),
            ("py:exception", "ImportError", "library/exceptions.html#$"),
            ("py:exception", "FloatingPointError", "library/exceptions.html#$"),
            ("py:exception", "KeyboardInterrupt", "library/exceptions.html#$"),
            ("py:class", "pathlib.Path", "library/pathlib.html#$"),
            ("py:class", "os.PathLike", "library/os.html#$"),
            ("py:module", "pickle", "library/pickle.html#module-pickle"),
            ("py:module", "argparse", "library/argparse.html#module-argparse"),
        ],
    ),
    "numpy": (
        "https://numpy.org/doc/stable/",
        [
            ("std:term", "array_like", "glossary.html#term-array_like"),
            ("py:class", "numpy.ndarray", "reference/generated/numpy.ndarray.html#$"),
            ("py:class", "numpy.memmap", "reference/generated/numpy.memmap.html#$"),
            ("py:function", "numpy.load", "reference/generated/numpy.load.html#$"),
            ("py:function", "numpy.save", "reference/generated/numpy.save.html#$"),
            ("py:function", "numpy.array_split", "reference/generated/numpy.array_split.html#$"),
            ("py:class", "numpy.random.RandomState", "reference/random/legacy.html#$"),
        ],
    ),
    "sklearn": (
        "https://scikit-learn.org/stable/",
        [
            *(
                ("py:class", name, f"modules/generated/{name}.html#$")
                for name in (
                    "sklearn.pipeline.Pipeline",
                    "sklearn.model_selection.GridSearchCV",
                    "sklearn.neighbors.NearestNeighbors",
                    "sklearn.linear_model.LogisticRegression",
                    "sklearn.decomposition.PCA",
                    "sklearn.manifold.TSNE",
                    "sklearn.preprocessing.StandardScaler",
                    "sklearn.base.BaseEstimator",
                    "sklearn.base.TransformerMixin",
                    "sklearn.base.ClassNamePrefixFeaturesOutMixin",
                )
            ),
            *(
                ("py:function", name, f"modules/generated/{name}.html#$")
                for name in (
                    "sklearn.base.clone",
                    "sklearn.datasets.load_digits",
                    "sklearn.model_selection.train_test_split",
                    "sklearn.utils.check_random_state",
                )
            ),
            (
                "py:method",
                "sklearn.base.TransformerMixin.fit_transform",
                "modules/generated/sklearn.base.TransformerMixin.html#$",
            ),
            (
                "py:method",
                "sklearn.base.BaseEstimator.get_params",
                "modules/generated/sklearn.base.BaseEstimator.html#$",
            ),
            (
                "py:method",
                "sklearn.base.BaseEstimator.set_params",
                "modules/generated/sklearn.base.BaseEstimator.html#$",
            ),
            (
                "py:method",
                "sklearn.base.TransformerMixin.set_output",
                "modules/generated/sklearn.base.TransformerMixin.html#$",
            ),
            (
                "py:method",
                "sklearn.base.ClassNamePrefixFeaturesOutMixin.get_feature_names_out",
                "modules/generated/sklearn.base.ClassNamePrefixFeaturesOutMixin.html#$",
            ),
        ],
    ),
    "torch": (
        "https://docs.pytorch.org/docs/stable/",
        [
            ("py:class", "torch.nn.Module", "generated/torch.nn.Module.html#$"),
            ("py:class", "torch.nn.SyncBatchNorm", "generated/torch.nn.SyncBatchNorm.html#$"),
            (
                "py:class",
                "torch.nn.parallel.DistributedDataParallel",
                "generated/torch.nn.parallel.DistributedDataParallel.html#$",
            ),
            ("py:class", "torch.device", "tensor_attributes.html#$"),
            ("py:function", "torch.compile", "generated/torch.compile.html#$"),
            ("py:function", "torch.set_num_threads", "generated/torch.set_num_threads.html#$"),
            ("py:function", "torch.distributed.init_process_group", "distributed.html#$"),
            ("py:module", "torch.distributed", "distributed.html#module-torch.distributed"),
        ],
    ),
    "skorch": (
        "https://skorch.readthedocs.io/en/stable/",
        [
            ("py:class", "skorch.net.NeuralNet", "net.html#$"),
            ("py:class", "skorch.history.History", "history.html#$"),
            ("py:class", "skorch.callbacks.EarlyStopping", "callbacks.html#$"),
            ("py:class", "skorch.callbacks.PassthroughScoring", "callbacks.html#$"),
        ],
    ),
    "matplotlib": (
        "https://matplotlib.org/stable/",
        [
            ("py:class", "matplotlib.figure.Figure", "api/_as_gen/matplotlib.figure.Figure.html#$"),
            ("py:class", "matplotlib.axes.Axes", "api/_as_gen/matplotlib.axes.Axes.html#$"),
        ],
    ),
}


def _inventory(project: str, entries):
    import sphobjinv as soi

    inventory = soi.Inventory()
    inventory.project, inventory.version = project, "stable"
    for role, name, uri in entries:
        domain, role = role.split(":")
        inventory.objects.append(soi.DataObjStr(name, domain, role, "1", uri, "-"))
    return inventory


def write_inventories(folder) -> dict[str, tuple[str, str]]:
    """Write one ``objects.inv`` per project into ``folder``; return ``intersphinx_mapping``.

    Parameters
    ----------
    folder : str or Path
        Where to write ``<project>.inv`` (created if needed).

    Returns
    -------
    dict
        For each project, ``(base address, path of its inventory)``, as Sphinx's
        ``intersphinx_mapping`` takes it.
    """
    import sphobjinv as soi

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for project, (base, entries) in PROJECTS.items():
        path = folder / f"{project}.inv"
        data = soi.compress(_inventory(project, entries).data_file())
        if not path.is_file() or path.read_bytes() != data:
            soi.writebytes(str(path), data)
        mapping[project] = (base, str(path))
    return mapping


def check_online() -> int:
    """Compare every entry with the project's published objects.inv (needs internet)."""
    import sphobjinv as soi

    wrong = 0
    for project, (base, entries) in PROJECTS.items():
        real = soi.Inventory(url=base + "objects.inv")
        published = {(o.domain, o.role, o.name): o.uri for o in real.objects}
        for role, name, uri in entries:
            domain, role = role.split(":")
            found = published.get((domain, role, name))
            if found is None:
                print(f"{project}: {domain}:{role} {name} is not in {base}objects.inv")
                wrong += 1
            elif found.split("#")[0] != uri.split("#")[0]:
                print(f"{project}: {name} is at {found}, not {uri}")
                wrong += 1
    print(f"{wrong} entr{'y' if wrong == 1 else 'ies'} differ from the published inventories")
    return 1 if wrong else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the real sites")
    parser.add_argument("--out", default=Path(__file__).parent / "_build" / "inventories")
    args = parser.parse_args()
    if args.check:
        sys.exit(check_online())
    for project, (base, path) in write_inventories(args.out).items():
        print(f"{project}: {path} -> {base}")
