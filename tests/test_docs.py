"""The documentation site (docs/): every public name has a reference page with its
parameters, what it returns and an example; a reduced site builds with warnings as errors
(every page, the API reference and the command-line page; the gallery's pages without
running the examples, which tests/test_examples.py runs); the examples written in the pages
pass; every link inside the built site resolves, and the math is MathML.

The builds need the docs extra (pip install -e ".[docs]") and skip, saying so, without it.
The full site, with the gallery run: python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dimlearn
import dimlearn.plot

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 600

PLOT_NAMES = ["plot_history", "plot_neighbours", "plot_embedding", "browse"]


def public_objects():
    """Every public name with a reference page: ``__all__`` and the figures of dimlearn.plot."""
    names = [(f"dimlearn.{name}", getattr(dimlearn, name)) for name in dimlearn.__all__]
    names += [(f"dimlearn.plot.{name}", getattr(dimlearn.plot, name)) for name in PLOT_NAMES]
    return [(name, obj) for name, obj in names if name != "dimlearn.__version__"]


def sections(docstring: str) -> set[str]:
    """The numpydoc section titles of a docstring (a title underlined with dashes)."""
    lines = inspect.cleandoc(docstring).splitlines()
    return {
        lines[i].strip()
        for i in range(len(lines) - 1)
        if re.fullmatch(r"-{3,}", lines[i + 1].strip())
        and len(lines[i + 1].strip()) == len(lines[i].strip())
    }


def test_the_api_page_lists_every_public_name():
    api = (DOCS / "api.rst").read_text()
    listed = set(re.findall(r"^   (\w+)$", api, flags=re.MULTILINE))
    assert set(dimlearn.__all__) - {"__version__"} <= listed, "api.rst: add the new names"
    assert "py:data:: __version__" in api
    public_plot = {
        name
        for name, obj in vars(dimlearn.plot).items()
        if callable(obj)
        and not name.startswith("_")
        and getattr(obj, "__module__", "").startswith("dimlearn")
    }
    assert public_plot == set(PLOT_NAMES) <= listed, "api.rst and PLOT_NAMES: dimlearn.plot changed"


@pytest.mark.parametrize(
    "name, obj", public_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_public_name_documents_parameters_returns_and_an_example(name, obj):
    found = sections(obj.__doc__ or "")
    assert "Examples" in found, f"{name}: no Examples section"
    if inspect.isclass(obj) and issubclass(obj, Exception):
        return  # an exception: raised, not called
    if inspect.isclass(obj):  # the estimator: its parameters, and its methods' returns
        assert "Parameters" in found and "Attributes" in found, name
        for method in ("fit", "partial_fit", "transform", "score"):
            method_sections = sections(getattr(obj, method).__doc__)
            assert {"Parameters", "Returns", "Examples"} <= method_sections, f"{name}.{method}"
        return
    assert {"Parameters", "Returns"} <= found, f"{name}: {sorted(found)}"


def needs_docs_extra():
    for module in (
        "sphinx",
        "numpydoc",
        "sphinx_gallery",
        "pydata_sphinx_theme",
        "sphinxarg",
        "myst_parser",
        "sphobjinv",
    ):
        pytest.importorskip(module, reason=f"{module} missing: pip install -e '.[docs]'")


def sphinx(builder: str, out: Path) -> subprocess.CompletedProcess:
    """A Sphinx build of the reduced site (the examples not run), warnings as errors."""
    env = dict(os.environ, DIMLEARN_DOCS_EXAMPLES="off", MPLBACKEND="Agg")
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        builder,
        "-d",
        str(out / "doctrees"),
        str(DOCS),
        str(out / builder),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    needs_docs_extra()
    out = tmp_path_factory.mktemp("docs")
    result = sphinx("html", out)
    assert "WARNING" not in result.stderr, result.stderr
    return out / "html"


@pytest.mark.slow
def test_the_reduced_site_builds_without_a_warning(site):
    for page in [
        "index",
        "getting_started",
        "api",
        "cli",
        "objective",
        "results/index",
        "user_guide/index",
        "auto_examples/index",
        "results/records/index",
        "generated/dimlearn.DeepInfomaxTransformer",
        "generated/dimlearn.plot.browse",
    ]:
        assert (site / f"{page}.html").is_file(), page
    for script in (ROOT / "examples").glob("*.py"):
        assert (site / "auto_examples" / f"{script.stem}.html").is_file(), script.name
    for record in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert (site / "results" / "records" / f"{record.stem}.html").is_file(), record.name


@pytest.mark.slow
def test_every_link_inside_the_site_resolves(site):
    sys.path.insert(0, str(DOCS))
    try:
        from check_links import broken_links
    finally:
        sys.path.remove(str(DOCS))
    assert broken_links(site) == []


@pytest.mark.slow
def test_the_math_is_mathml_and_nothing_is_fetched(site):
    objective = (site / "objective.html").read_text()
    assert objective.count("<math") > 10 and "\\frac" not in objective
    for page in site.rglob("*.html"):  # no script or style from another site
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=\"https?://", text), page
        assert not re.search(r"<link[^>]+href=\"https?://[^\"]+\.css", text), page


@pytest.mark.slow
def test_the_examples_in_the_pages_pass(tmp_path):
    needs_docs_extra()
    sphinx("doctest", tmp_path)
    summary = (tmp_path / "doctest" / "output.txt").read_text()
    tests = int(re.search(r"(\d+) tests\n", summary.split("Doctest summary")[1]).group(1))
    assert tests > 50 and "0 failures in tests" in summary, summary
