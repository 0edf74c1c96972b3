"""Each example script runs end to end (with --quick: a tiny network, an epoch or two) and
prints what it promises, with numbers in their ranges; the README points to every one."""

import ast
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from dimlearn.estimator import SCORE_BATCH

ROOT = Path(__file__).parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

ACCURACY = r"(?P<accuracy>[01]\.\d{3})"

# per script: each regex must match exactly that many whole lines of the --quick output
EXPECTED = {
    "quickstart.py": {
        r"fitted Deep InfoMax on (?P<n>\d+) digits in (?P<seconds>\d+\.\d) s": 1,
        r"linear probe, test accuracy \((?P<n>\d+) digits\):": 1,
        rf"  DIM codes \((?P<k>\d+)-d\)  {ACCURACY}": 1,
        rf"  PCA \((?P<k>\d+)-d\) +{ACCURACY}": 1,
        r"image search: each test digit and the labels of its 9 nearest training digits": 1,
        r"  (?P<query>\d) -> (?P<labels>\d(?: \d){8})   \((?P<share>\d+)% same digit\)": 5,
    },
    "pipeline_and_search.py": {
        rf"pipeline test accuracy: {ACCURACY}": 1,
        r"query (?P<query>\d): neighbours (?P<labels>\[.*\]) at cosine distances "
        r"(?P<distances>\[.*\])": 3,
    },
    "grid_search.py": {
        rf"(?P<params>\{{'dim__alpha': .*\}}): {ACCURACY}": 4,
        r"best by a classifier's accuracy: (?P<params>\{.*\})": 1,
        r"(?P<params>\{'alpha': .*\}): (?P<nats>-?\d+\.\d{3}) nats": 4,
        r"best by held-out local MI, no labels: (?P<params>\{.*\})": 1,
    },
    "dask_grid_search.py": {
        r"dask cluster with (?P<workers>\d+) workers": 1,
        r"searched on dask in (?P<seconds>\d+\.\d) s": 1,
        rf"(?P<params>\{{'dim__alpha': .*\}}): {ACCURACY}": 4,
        r"best on dask: (?P<params>\{.*\})": 1,
        r"dask and serial searches agree: True": 1,
    },
    "distributed_fit.py": {
        r"fitted on (?P<n>\d+) images by 1 process\(es\) in (?P<seconds>\d+\.\d) s": 1,
        r"loss per epoch: (?P<losses>-?\d+\.\d{4}(?:, -?\d+\.\d{4})*)": 1,
    },
    "save_and_load.py": {
        r"saved digits_dim\.safetensors: (?P<mb>\d+\.\d\d) MB": 1,
        r"loaded model gives identical codes: True": 1,
        r"saved digits_full\.safetensors with training state: (?P<mb>\d+\.\d\d) MB": 1,
        r"training resumed from the file matches the in-memory model: True": 1,
    },
}


def matched_lines(stdout: str, script: str) -> dict[str, list[dict]]:
    """For each expected regex of the script, the named groups of the lines it matches."""
    lines = stdout.splitlines()
    found = {}
    for pattern, count in EXPECTED[script].items():
        hits = [m.groupdict() for line in lines if (m := re.fullmatch(pattern, line))]
        assert len(hits) == count, f"{count} line(s) like {pattern!r} expected in:\n{stdout}"
        found[pattern] = hits
    return found


def check_quickstart(found):
    (fitted, heading, dim, pca, _, searches) = found.values()
    assert fitted[0]["n"] == "1347" and heading[0]["n"] == "450"  # the 75/25 digits split
    assert float(fitted[0]["seconds"]) >= 0
    # PCA of the same size as the codes; both probes well above chance (0.1)
    assert dim[0]["k"] == pca[0]["k"] and int(dim[0]["k"]) > 0
    assert 0.3 < float(dim[0]["accuracy"]) <= 1
    assert 0.9 < float(pca[0]["accuracy"]) <= 1
    for hit in searches:
        labels = hit["labels"].split()
        assert int(hit["share"]) == round(100 * labels.count(hit["query"]) / 9)


def check_pipeline_and_search(found):
    (accuracy, queries) = found.values()
    assert 0.3 < float(accuracy[0]["accuracy"]) <= 1  # rows stay aligned with labels
    for hit in queries:
        labels = ast.literal_eval(hit["labels"])
        distances = ast.literal_eval(hit["distances"])
        assert len(labels) == 5 and all(0 <= label <= 9 for label in labels)
        assert len(distances) == 5 and all(0 <= d <= 2 for d in distances)  # cosine
        assert distances == sorted(distances)


def best_of(rows, key):
    best = max(float(row[key]) for row in rows)
    return [ast.literal_eval(row["params"]) for row in rows if float(row[key]) == best]


def check_grid_search(found):
    (scored, best_scored, mi, best_mi) = found.values()
    assert [ast.literal_eval(row["params"]) for row in scored] == [
        {"dim__alpha": alpha, "dim__beta": 1.0, "dim__gamma": gamma}
        for alpha in (0.0, 0.5)
        for gamma in (0.01, 0.1)
    ]
    assert all(0.2 < float(row["accuracy"]) <= 1 for row in scored)  # chance is 0.1
    assert ast.literal_eval(best_scored[0]["params"]) in best_of(scored, "accuracy")
    assert [ast.literal_eval(row["params"]) for row in mi] == [
        {"alpha": alpha, "gamma": gamma} for alpha in (0.0, 0.5) for gamma in (0.0, 0.1)
    ]
    # an infoNCE bound: at most log(batch size), about 0 for an untrained critic
    assert all(-0.5 < float(row["nats"]) <= math.log(SCORE_BATCH) for row in mi)
    assert ast.literal_eval(best_mi[0]["params"]) in best_of(mi, "nats")


def check_dask_grid_search(found):
    (workers, seconds, scored, best, _agree) = found.values()
    assert workers[0]["workers"] == "2" and float(seconds[0]["seconds"]) >= 0
    assert [ast.literal_eval(row["params"]) for row in scored] == [
        {"dim__alpha": alpha, "dim__beta": 1.0, "dim__gamma": gamma}
        for alpha in (0.0, 0.5)
        for gamma in (0.0, 0.1)
    ]
    assert all(0.1 < float(row["accuracy"]) <= 1 for row in scored)  # chance is 0.1
    assert ast.literal_eval(best[0]["params"]) in best_of(scored, "accuracy")


def check_save_and_load(found):
    (compact,), (full,) = (
        [float(row["mb"]) for row in rows] for key, rows in found.items() if "saved" in key
    )
    assert 0 < compact < full  # the training state (critics, Adam's moments) is extra


def check_distributed_fit(found):
    (fitted, losses) = found.values()
    assert fitted[0]["n"] == "1797" and float(fitted[0]["seconds"]) >= 0
    curve = [float(v) for v in losses[0]["losses"].split(", ")]
    assert len(curve) == 2 and all(math.isfinite(v) for v in curve)  # --quick: 2 epochs


CHECKS = {
    "quickstart.py": check_quickstart,
    "distributed_fit.py": check_distributed_fit,
    "pipeline_and_search.py": check_pipeline_and_search,
    "grid_search.py": check_grid_search,
    "save_and_load.py": check_save_and_load,
    "dask_grid_search.py": check_dask_grid_search,
}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    if script.name == "dask_grid_search.py":
        pytest.importorskip("distributed")
    result = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    CHECKS[script.name](matched_lines(result.stdout, script.name))


TRAININGS = {
    "quickstart.py": 1,  # the probe and the search read the fitted codes
    "pipeline_and_search.py": 1,
    "save_and_load.py": 3,  # the model, then the resumed file and the in-memory model
    "distributed_fit.py": 1,
}
"""How many times each example trains a DeepInfomaxTransformer (fit or partial_fit); the
searches (grid_search.py, dask_grid_search.py) train in worker processes."""


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TRAININGS))
def test_an_example_trains_as_often_as_it_says(script, monkeypatch, capsys):
    from dimlearn import DeepInfomaxTransformer

    calls = []
    original = DeepInfomaxTransformer._train

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeepInfomaxTransformer, "_train", counting)
    namespace = runpy.run_path(str(ROOT / "examples" / script), run_name="example")
    quick = (True, None, None) if script == "distributed_fit.py" else (True,)  # --quick
    namespace["main"](*quick)
    assert len(calls) == TRAININGS[script], capsys.readouterr().out


def test_all_user_stories_have_an_example():
    # every example has expectations above, and every user story has its example
    assert {p.name for p in EXAMPLES} == set(EXPECTED) == set(CHECKS)
    assert {"quickstart.py", "pipeline_and_search.py", "grid_search.py", "save_and_load.py"} <= {
        p.name for p in EXAMPLES
    }
    for script in EXAMPLES:
        assert "--quick" in script.read_text(), script.name


def test_readme_names_every_example():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in EXAMPLES if p.name not in readme]
    assert not missing, f"README.md does not mention {missing}"
