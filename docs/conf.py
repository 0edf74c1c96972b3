"""Sphinx configuration of dimlearn's documentation.

Build the site (from the repository root, with ``pip install -e ".[docs]"``)::

    make -C docs html        # = python -m sphinx -W --keep-going -b html docs docs/_build/html

Environment variables:

``DIMLEARN_DOCS_EXAMPLES``
    How the gallery runs ``examples/*.py``: ``quick`` (the default: each script with its
    ``--quick`` flag, a tiny network for an epoch or two, so the whole build stays within a
    few minutes on 2 CPU cores), ``full`` (each script as a user runs it, several minutes
    more) or ``off`` (not run: the gallery pages show the code without output; the reduced
    site that ``tests/test_docs.py`` builds).

Nothing is downloaded at build time: intersphinx reads inventories written by
``docs/inventories.py`` from its list of the names these pages link to, and math is
written as MathML (``docs/_ext/mathml.py``) instead of being left to a MathJax script.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(DOCS / "_ext"), str(DOCS), str(ROOT)]

import inventories  # noqa: E402  (docs/inventories.py)

import dimlearn  # noqa: E402

project = "dimlearn"
author = "the dimlearn developers"
copyright = "the dimlearn developers, MIT licence"  # noqa: A001
release = dimlearn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "sphinxarg.ext",
    "myst_parser",
    "mathml",
    "records",
    "settings_table",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["dimlearn.css"]

# every cross-reference must resolve: a name that links nowhere is a warning (an error
# under -W); names in other projects' docs come from the local inventories below
nitpicky = True
nitpick_ignore_regex = [
    # the internal modules are documented in their docstrings but not on the site (see
    # dimlearn/__init__.py): references into them stay plain text
    (
        r"py:.*",
        r"(dimlearn\.)?(estimator|training|net|callbacks|infomax|networks|critics|objectives|config"
        r"|fitted|inputs|inference|distributed|devices|persistence|images|views|browse|settings"
        r"|upgrades|model_file|optimizer_state)(\..*)?",
    ),
]

# -- math: MathML written at build time (docs/_ext/mathml.py) -----------------------------
html_math_renderer = "mathml"

# -- intersphinx: offline inventories (docs/inventories.py) -------------------------------
intersphinx_mapping = inventories.write_inventories(DOCS / "_build" / "inventories")
intersphinx_timeout = 1

# -- autodoc, autosummary, numpydoc -------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = True
numpydoc_xref_ignore = "all"  # only the aliases below become links; other words stay text
numpydoc_xref_aliases = {
    "DeepInfomaxTransformer": "dimlearn.DeepInfomaxTransformer",
    "ndarray": "numpy.ndarray",
    "array": "numpy.ndarray",
    "RandomState": "numpy.random.RandomState",
    "Path": "pathlib.Path",
    "Figure": "matplotlib.figure.Figure",
    "Axes": "matplotlib.axes.Axes",
    "torch.nn.Module": "torch.nn.Module",
    "skorch.History": "skorch.history.History",
    "str": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "dict": "dict",
    "list": "list",
    "tuple": "tuple",
}
# every public name's page has its parameters, what it returns and an example; numpydoc
# checks the docstrings of the pages it builds (tests/test_docs.py checks the list of names)
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "RT01", "EX01"}
numpydoc_validation_exclude = {
    r"\.__init__$",
    r"^dimlearn\.__version__$",
    # sklearn's own methods, inherited: documented and checked by scikit-learn
    r"\.(get_params|set_params|fit_transform|set_output|get_metadata_routing"
    r"|set_partial_fit_request|set_score_request|set_fit_request|set_transform_request)$",
}

# -- doctest: the pages' ```{doctest}``` blocks (python -m sphinx -b doctest docs ...) ----
# the docstrings' examples are run by pytest (--doctest-modules), not here
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import numpy as np
np.set_printoptions(precision=3, suppress=True)
"""

# -- the gallery: examples/*.py run at build time ----------------------------------------
EXAMPLES_MODE = os.environ.get("DIMLEARN_DOCS_EXAMPLES", "quick")
if EXAMPLES_MODE not in {"quick", "full", "off"}:
    raise ValueError(f"DIMLEARN_DOCS_EXAMPLES={EXAMPLES_MODE!r}: use quick, full or off")


# what the gallery's index says about the run (examples/GALLERY_HEADER.rst)
_GALLERY_MODE = {
    "quick": "with its ``--quick`` flag: a tiny network for an epoch or two, so its numbers "
    "show that the script works, not how good the codes get",
    "full": "as a user runs it, without flags",
    "off": "not at all (``DIMLEARN_DOCS_EXAMPLES=off``): the pages show the code only",
}[EXAMPLES_MODE]
rst_prolog = f".. |gallery_mode| replace:: {_GALLERY_MODE}\n"

# sphinx-gallery reruns only the examples whose files changed: rerun them all when the mode
# changed since the last build (a marker in the git-ignored output folder)
_mode_marker = DOCS / "auto_examples" / ".examples_mode"
_mode_changed = not _mode_marker.is_file() or _mode_marker.read_text() != EXAMPLES_MODE
_mode_marker.parent.mkdir(exist_ok=True)
_mode_marker.write_text(EXAMPLES_MODE)

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"\.py$",  # run every example, not only plot_*.py
    "plot_gallery": EXAMPLES_MODE != "off",
    "run_stale_examples": _mode_changed,
    "reset_argv": "gallery_argv.example_argv",  # docs/_ext/gallery_argv.py
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "within_subsection_order": "gallery_argv.ExampleOrder",
    "doc_module": ("dimlearn",),
    "backreferences_dir": "generated/backreferences",
    "image_scrapers": ("matplotlib",),
    "capture_repr": (),
    "min_reported_time": 0,
    "write_computation_times": False,  # its page loads DataTables from a CDN
    "download_all_examples": False,
    "show_signature": False,
    "remove_config_comments": True,
}

# -- MyST (the Markdown pages) -------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # the result files start at "##": their own convention

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"dimlearn {release}"
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
}
html_sidebars = {"index": [], "getting_started": []}
html_show_sourcelink = True
html_copy_source = True
