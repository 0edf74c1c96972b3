"""ANN benchmark: approximate nearest-neighbour indexes for image search on a million codes.

    python -m benchmarks.ann                        # 1M codes, all libraries, ~25 min on 2 cores
    python -m benchmarks.ann --n 200000 --libraries hnswlib faiss
    python -m benchmarks.ann --codes clusters --n 3000 --n-queries 50 --out /tmp/ann

Codes (``--codes dim``, the default): a DeepInfomaxTransformer (default architecture, 64-d
codes) fitted for ``--fit-epochs`` epoch(s) on ``--n-fit`` CIFAR-10 training images, then
``transform`` of the 50,000 training and 10,000 test images. Every code is L2-normalised; the
index holds ``--n`` noisy copies of the training codes (each repeated ``n / 50,000`` times,
in shuffled order): ``(u_j + e) * |c_j|`` with ``e ~ N(0, s^2 I)``, ``s = bandwidth * d1 /
sqrt(64)`` and d1 the median distance from a normalised training code to its nearest other
one, so that each image becomes a cloud about as wide as the gap to its nearest neighbour
(a smoothed bootstrap of the real codes, not iid noise). The queries are noisy copies, made
the same way, of the test images' codes: images the index never saw. ``--codes clusters``
does the same with synthetic base codes (a mixture of 300 Gaussian clusters of varied sizes
and spreads in 16 dims, through a random linear map to 64 dims), for machines without
CIFAR-10 and for the tests.

Cosine: for unit vectors |a - b|^2 = 2 - 2 a.b, so the cosine, inner-product and L2 rankings
are the same. scikit-learn, pynndescent and hnswlib get the raw codes and
``metric="cosine"``/``space="cosine"``; numpy and faiss get L2-normalised codes and use the
inner product (``METRIC_INNER_PRODUCT``); normalising is part of faiss's build time.

Exact: the ground truth is a chunked numpy brute force (normalised dot products, BLAS, then
``argpartition``) over all queries; scikit-learn's ``NearestNeighbors(metric="cosine",
algorithm="brute").kneighbors`` is timed on the first ``--n-sklearn`` queries. Each index
is built in a fresh process (``--child``) that loads the codes from .npy files, so memory is
measured from a clean baseline and freed afterwards; q/s is one batch ``query`` call with all
queries on ``--threads`` threads, the median of ``--repeats`` calls after a warm-up call on
10 queries. Missing libraries are skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10
GOAL_RECALL, GOAL_SPEEDUP = 0.95, 10.0
MIB = 2**20
# index name -> (module it needs, the knob, default knob values, how it is built)
INDEXES = {
    "pynndescent": ("pynndescent", "epsilon", [0.1, 0.2, 0.3], "n_neighbors=30"),
    "hnswlib": ("hnswlib", "ef", [16, 32, 64, 128], "M=16, ef_construction=100"),
    "faiss-hnsw": (
        "faiss",
        "efSearch",
        [16, 32, 64, 128],
        "IndexHNSWFlat, M=16, efConstruction=100",
    ),
    "faiss-ivf": ("faiss", "nprobe", [4, 16, 64], "IndexIVFFlat, nlist=round(sqrt(n))"),
}
ALIASES = {"faiss": ["faiss-hnsw", "faiss-ivf"]}
INSTALL = {"pynndescent": "pynndescent", "hnswlib": "hnswlib", "faiss": "faiss-cpu"}


# ---------------------------------------------------------------------------------- data


def dim_base_codes(seed: int, n_fit: int, epochs: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Codes of CIFAR-10's 50k training and 10k test images from a briefly fitted DIM model."""
    from dimlearn import DeepInfomaxTransformer

    from .common import load_dataset

    X_train, _, X_test, _, _ = load_dataset("cifar10", None, None, seed)
    rows = np.random.default_rng(seed).choice(len(X_train), n_fit, replace=False)
    dim = DeepInfomaxTransformer(max_epochs=epochs, random_state=seed, device="cpu")
    dim.fit(X_train[rows])
    about = (
        f"DeepInfomaxTransformer(max_epochs={epochs}, random_state={seed}) fitted on {n_fit} "
        "CIFAR-10 training images; codes of the 50,000 training images (index base) and "
        "10,000 test images (query base)"
    )
    return dim.transform(X_train), dim.transform(X_test), about


def cluster_base_codes(seed: int, n_base: int = 50_000, n_query_base: int = 10_000):
    """Synthetic structured codes: 300 Gaussian clusters (Dirichlet(0.5) sizes, spreads
    log-uniform in [0.1, 0.6]) in 16 dims, a random linear map to 64 dims, small noise."""
    rng = np.random.default_rng(seed)
    n_clusters, latent, dims = 300, 16, 64
    weights = rng.dirichlet(np.full(n_clusters, 0.5))
    centres = rng.normal(size=(n_clusters, latent))
    spreads = np.exp(rng.uniform(np.log(0.1), np.log(0.6), n_clusters))
    labels = rng.choice(n_clusters, n_base + n_query_base, p=weights)
    z = centres[labels] + rng.normal(size=(len(labels), latent)) * spreads[labels, None]
    codes = z @ rng.normal(size=(latent, dims)) / math.sqrt(latent)
    codes = (codes + 0.05 * rng.normal(size=codes.shape)).astype(np.float32)
    about = (
        "synthetic: 300 Gaussian clusters (sizes Dirichlet(0.5), spreads log-uniform 0.1-0.6) "
        "in 16 dims through a random 16x64 linear map plus N(0, 0.05^2) noise; "
        f"{n_base} index-base and {n_query_base} query-base codes"
    )
    return codes[:n_base], codes[n_base:], about


def normalise(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def median_nn_distance(unit: np.ndarray, rng, sample: int = 2000) -> float:
    """Median Euclidean distance from a unit code to its nearest other unit code."""
    rows = rng.choice(len(unit), min(sample, len(unit)), replace=False)
    sims = unit[rows] @ unit.T
    sims[np.arange(len(rows)), rows] = -np.inf
    return float(np.median(np.sqrt(np.maximum(2 - 2 * sims.max(axis=1), 0))))


def noisy_copies(base: np.ndarray, rows: np.ndarray, sigma: float, rng, chunk=100_000):
    """``(u_j + e) * |c_j|`` for j in rows, e ~ N(0, sigma^2 I): float32, chunk by chunk."""
    norms = np.linalg.norm(base, axis=1, keepdims=True).astype(np.float32)
    unit = (base / norms).astype(np.float32)
    out = np.empty((len(rows), base.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        j = rows[start : start + chunk]
        noise = rng.standard_normal((len(j), base.shape[1]), dtype=np.float32)
        out[start : start + chunk] = (unit[j] + np.float32(sigma) * noise) * norms[j]
    return out


def make_codes(args) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(codes, queries, description)``; see the module docstring."""
    note = None
    if args.codes == "dim":
        from .common import DatasetMissing

        try:
            base, query_base, about = cached(args, dim_base_codes)
        except DatasetMissing as error:
            note = f"{error}; fell back to --codes clusters"
            print(note, flush=True)
            base, query_base, about = cluster_base_codes(args.seed)
    else:
        base, query_base, about = cluster_base_codes(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    d1 = median_nn_distance(normalise(base), rng)
    sigma = args.bandwidth * d1 / math.sqrt(base.shape[1])
    rows = np.resize(rng.permutation(len(base)), args.n)
    rng.shuffle(rows)
    codes = noisy_copies(base, rows, sigma, rng)
    query_rows = rng.choice(
        len(query_base), args.n_queries, replace=args.n_queries > len(query_base)
    )
    queries = noisy_copies(query_base, query_rows, sigma, rng)
    description = {
        "base": about,
        "n_base": len(base),
        "copies_per_base_code": args.n / len(base),
        "median_nn_distance_d1": d1,
        "bandwidth": args.bandwidth,
        "noise_sigma_per_dim": sigma,
        "noise_norm_expected": sigma * math.sqrt(base.shape[1]),
        "n_query_base": len(query_base),
        "note": note,
    }
    return codes, queries, description


def cached(args, make):
    """``make(seed, n_fit, epochs)``, stored in ``--cache`` (when given) for later runs."""
    if args.cache is None:
        return make(args.seed, args.n_fit, args.fit_epochs)
    path = Path(args.cache) / f"ann_dim_codes_s{args.seed}_n{args.n_fit}_e{args.fit_epochs}.npz"
    if path.exists():
        with np.load(path) as saved:
            return saved["base"], saved["query_base"], str(saved["about"])
    base, query_base, about = make(args.seed, args.n_fit, args.fit_epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, base=base, query_base=query_base, about=about)
    return base, query_base, about


# --------------------------------------------------------------------------------- exact


def exact_neighbours(unit_codes, unit_queries, k: int = K, chunk: int = 64) -> np.ndarray:
    """Indices of the k largest dot products per query, best first: BLAS + argpartition."""
    out = np.empty((len(unit_queries), k), dtype=np.int64)
    for start in range(0, len(unit_queries), chunk):
        sims = unit_queries[start : start + chunk] @ unit_codes.T
        top = np.argpartition(sims, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k neighbours among the k found (ids -1 never match)."""
    found = np.asarray(found, dtype=np.int64)[:, : truth.shape[1]]
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / truth.shape[1])


# ------------------------------------------------------------------------------- indexes


def _build_pynndescent(codes, threads, seed):
    import numba
    from pynndescent import NNDescent

    numba.set_num_threads(threads)
    # parallel_batch_queries: pynndescent answers a batch on one thread unless asked
    index = NNDescent(
        codes,
        metric="cosine",
        n_neighbors=30,
        random_state=seed,
        n_jobs=threads,
        parallel_batch_queries=True,
    )
    index.prepare()
    return index


def _search_pynndescent(index, queries, k, epsilon):
    return index.query(queries, k=k, epsilon=epsilon)[0]


def _build_hnswlib(codes, threads, seed):
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=codes.shape[1])
    index.init_index(max_elements=len(codes), ef_construction=100, M=16, random_seed=seed)
    index.set_num_threads(threads)
    index.add_items(codes, num_threads=threads)
    return index


def _search_hnswlib(index, queries, k, ef):
    index.set_ef(max(ef, k))
    return index.knn_query(queries, k=k)[0].astype(np.int64)


def _build_faiss_hnsw(codes, threads, seed):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(codes.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 100
    index.add(normalise(codes).astype(np.float32))
    return index


def _search_faiss_hnsw(index, queries, k, ef):
    index.hnsw.efSearch = max(ef, k)
    return index.search(normalise(queries).astype(np.float32), k)[1]


def _build_faiss_ivf(codes, threads, seed):
    import faiss

    faiss.omp_set_num_threads(threads)
    unit = normalise(codes).astype(np.float32)
    nlist = max(1, round(math.sqrt(len(unit))))
    index = faiss.IndexIVFFlat(
        faiss.IndexFlatIP(unit.shape[1]), unit.shape[1], nlist, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(len(unit), min(len(unit), 64 * nlist), False)
    index.train(unit[np.sort(sample)])
    index.add(unit)
    return index


def _search_faiss_ivf(index, queries, k, nprobe):
    index.nprobe = min(nprobe, index.nlist)
    return index.search(normalise(queries).astype(np.float32), k)[1]


BUILDERS = {
    "pynndescent": (_build_pynndescent, _search_pynndescent),
    "hnswlib": (_build_hnswlib, _search_hnswlib),
    "faiss-hnsw": (_build_faiss_hnsw, _search_faiss_hnsw),
    "faiss-ivf": (_build_faiss_ivf, _search_faiss_ivf),
}


def _settle() -> float:
    """Frees what can be freed, resets the peak RSS (Linux); returns RssAnon in MiB."""
    from .common import settle_memory, status_mib

    settle_memory()
    return status_mib("RssAnon").get("RssAnon", float("nan"))


def child(name: str, folder: str) -> list[dict]:
    """In a fresh process: build one index, query it at each knob value, one row each."""
    from .common import status_mib

    params = json.loads((Path(folder) / "params.json").read_text())
    codes = np.load(Path(folder) / "codes.npy")
    queries = np.load(Path(folder) / "queries.npy")
    truth = np.load(Path(folder) / "truth.npy")
    build, search = BUILDERS[name]
    module, knob, _, how = INDEXES[name]
    __import__(module)  # the import's memory and time are not the index's
    threads, k = params["threads"], params["k"]
    # a first build and query on 2,000 codes: one-time costs (numba's JIT compilation for
    # pynndescent, thread pools) that do not depend on n, reported apart as warm-up
    start = time.perf_counter()
    search(build(codes[:2000], threads, params["seed"]), queries[:10], k, params["knobs"][name][0])
    warmup_build_s = time.perf_counter() - start
    before = _settle()
    hwm_before = status_mib("VmHWM")["VmHWM"]
    start = time.perf_counter()
    index = build(codes, threads, params["seed"])
    build_s = time.perf_counter() - start
    build_peak = status_mib("VmHWM")["VmHWM"] - hwm_before
    index_mib = _settle() - before
    print(
        f"  {name}: warm-up {warmup_build_s:.1f} s, build {build_s:.1f} s, {index_mib:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
    rows = []
    for value in params["knobs"][name]:
        start = time.perf_counter()
        search(index, queries[:10], k, value)  # warm-up: JIT, caches, thread pools
        first_s = time.perf_counter() - start
        times, found = [], None
        for _ in range(params["repeats"]):
            start = time.perf_counter()
            result = search(index, queries, k, value)
            times.append(time.perf_counter() - start)
            found = result if found is None else found
        seconds = float(np.median(times))
        rows.append(
            {
                "library": name,
                "setting": f"{knob}={value}",
                "index": how,
                "n": len(codes),
                "n_queries": len(queries),
                "threads": threads,
                "build_s": build_s,
                "warmup_build_s": warmup_build_s,
                "index_mib": index_mib,
                "build_peak_mib": build_peak,
                "warmup_s": first_s,
                "query_s": seconds,
                "query_s_all": times,
                "qps": len(queries) / seconds,
                "recall": recall_at_k(found, truth),
                "load_avg": os.getloadavg()[0],
            }
        )
        print(
            f"  {name} {knob}={value}: {rows[-1]['qps']:.0f} q/s, "
            f"recall@{k} {rows[-1]['recall']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def run_child(name: str, folder: str, timeout: float | None) -> tuple[list[dict], str | None]:
    command = [sys.executable, "-m", "benchmarks.ann", "--child", name, folder]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return [], f"{name}: stopped after {timeout:.0f} s (--timeout)"
    if result.returncode != 0:
        return (
            [],
            f"{name}: failed (exit {result.returncode}) after {time.perf_counter() - start:.0f} s",
        )
    return json.loads(result.stdout.strip().splitlines()[-1]), None


# --------------------------------------------------------------------------------- report


def recommendation(rows: list[dict]) -> tuple[str, dict | None]:
    """The approximate index that meets recall >= 0.95 at >= 10x sklearn's q/s with the
    fastest build. The exact baselines are never recommended: the chunked numpy search can
    itself be 10x scikit-learn's brute force on a fast core, and it has no build or index."""
    meeting = [
        r
        for r in rows
        if r["kind"] == "ann"
        and r["recall"] >= GOAL_RECALL
        and r.get("speedup_sklearn", 0) >= GOAL_SPEEDUP
    ]
    if not meeting:
        best = max((r for r in rows if r["kind"] == "ann"), key=lambda r: r["recall"], default=None)
        if best is None:
            return "No approximate index was measured (none installed?).", None
        return (
            f"No index meets the goal (recall@{K} >= {GOAL_RECALL} at >= {GOAL_SPEEDUP:.0f}x "
            f"scikit-learn's brute-force q/s); the best recall was {best['library']} "
            f"{best['setting']}: {best['recall']:.3f} at {best['speedup_sklearn']:.1f}x.",
            None,
        )
    fastest = {}  # per library, its fastest setting that meets the goal
    for row in meeting:
        if row["library"] not in fastest or row["qps"] > fastest[row["library"]]["qps"]:
            fastest[row["library"]] = row
    pick = min(fastest.values(), key=lambda r: r["build_s"])
    others = [r for r in fastest.values() if r is not pick]
    text = (
        f"**{pick['library']}** ({pick['index']}) meets the goal with the fastest build: "
        f"{pick['setting']} gives recall@{K} {pick['recall']:.3f} at {pick['qps']:,.0f} q/s, "
        f"{pick['speedup_sklearn']:,.0f}x scikit-learn's brute force "
        f"({pick['speedup_numpy']:,.1f}x the chunked numpy exact search), after a "
        f"{pick['build_s']:.0f} s build holding {pick['index_mib']:,.0f} MiB."
    )
    if others:
        text += " Also meeting it: " + "; ".join(
            f"{r['library']} {r['setting']} (recall {r['recall']:.3f}, {r['qps']:,.0f} q/s, "
            f"{r['speedup_sklearn']:,.0f}x, build {r['build_s']:.0f} s)"
            for r in sorted(others, key=lambda r: r["build_s"])
        )
        text += "."
    missing = [r["library"] for r in rows if r["kind"] == "ann" and r["library"] not in fastest]
    if missing:
        text += f" Not meeting it at any measured setting: {', '.join(dict.fromkeys(missing))}."
    return text, pick


def markdown(args, argv, info, data, rows, notes, wall, verdict) -> str:
    from .common import machine_line, markdown_table

    loads = [r["load_avg"] for r in rows]
    versions = ", ".join(f"{k} {v}" for k, v in info["ann_libraries"].items())
    parts = [
        f"## {args.name}\n\nMachine: {machine_line(info)}; {versions}; {args.threads} threads "
        f"for every library (BLAS, numba, OpenMP). Load average at the start "
        f"{info['load_avg_start']:.1f}. Whole run {wall / 60:.1f} min. Command: "
        f"`python -m benchmarks.ann {' '.join(argv)}`\n",
        f"\nData: {rows[0]['n']:,} index codes x 64 dims, {args.n_queries:,} "
        f"queries. {data['base']}. Index = {data['copies_per_base_code']:g} noisy copies per "
        f"base code, queries = noisy copies of query-base codes (never in the index): "
        f"`(u + e) * |c|`, u the unit code, e ~ N(0, s^2 I), s = {data['bandwidth']:g} x "
        f"d1 / 8 = {data['noise_sigma_per_dim']:.4f} (d1 = {data['median_nn_distance_d1']:.3f}"
        f", the median distance from a unit base code to its nearest other one). Cosine "
        "metric throughout.\n",
        f"\nq/s: one batch call with all queries (median of {args.repeats} after a warm-up "
        f"call), except scikit-learn: one call on the first {rows[1]['n_queries']:,} queries; "
        "numpy: the chunked ground-truth pass itself. Speedups are q/s ratios. Build = "
        "constructor + add/prepare, timed after a warm-up build and query on 2,000 codes in the "
        "same process (warm-up s: one-time costs, mostly numba's JIT compilation for "
        "pynndescent; a user pays them once per process). "
        "index MiB = RssAnon growth of the build, after freeing (roughly what the index "
        f"holds; the codes themselves, {rows[0]['n'] * 64 * 4 / MIB:,.0f} MiB, are loaded "
        "before). pynndescent is asked for `parallel_batch_queries=True` (its default answers "
        "a batch on one thread). 1-minute load average during the rows: "
        f"{min(loads):.1f} to {max(loads):.1f} on {info['cores']} cores (per row in the "
        "JSON; above the thread count, other jobs shared the machine).\n\n",
        markdown_table(
            rows,
            [
                ("library", "library"),
                ("setting", "setting"),
                ("build_s", "build s", ".1f"),
                ("warmup_build_s", "warm-up s", ".1f"),
                ("index_mib", "index MiB", ".0f"),
                ("qps", "q/s", ",.0f"),
                ("speedup_sklearn", "x sklearn brute", ",.1f"),
                ("speedup_numpy", "x numpy exact", ",.2f"),
                ("recall", f"recall@{K}", ".4f"),
            ],
        ),
        f"\nGoal: recall@{K} >= {GOAL_RECALL} at >= {GOAL_SPEEDUP:.0f}x the exact q/s of "
        'scikit-learn\'s `NearestNeighbors(metric="cosine", algorithm="brute")` (what '
        "users have). " + verdict + "\n",
    ]
    if notes:
        parts.append("\nNotes:\n\n" + "".join(f"- {n}\n" for n in notes))
    return "".join(parts)


# ----------------------------------------------------------------------------------- main


def selected(names: list[str]) -> list[str]:
    out = []
    for name in names:
        out += ALIASES.get(name, [name])
    return list(dict.fromkeys(out))


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("pynndescent", "numba", "hnswlib", "faiss-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="codes in the index")
    parser.add_argument("--n-queries", type=int, default=5000)
    parser.add_argument("--n-sklearn", type=int, default=500, help="queries timed in sklearn")
    parser.add_argument(
        "--libraries",
        nargs="*",
        default=["hnswlib", "faiss", "pynndescent"],
        choices=[*INDEXES, *ALIASES],
    )
    parser.add_argument("--codes", choices=["dim", "clusters"], default="dim")
    parser.add_argument("--n-fit", type=int, default=10_000, help="CIFAR images the DIM fits")
    parser.add_argument("--fit-epochs", type=int, default=1)
    parser.add_argument("--bandwidth", type=float, default=1.0, help="noise norm / d1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed query calls (median)")
    parser.add_argument("--timeout", type=float, default=1800, help="per library, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="folder keeping the DIM codes for reruns")
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument("--name", default="ann")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    for name, (_, knob, values, _) in INDEXES.items():
        kind = float if knob == "epsilon" else int
        flag = f"--{name}-{knob.lower()}"
        parser.add_argument(flag, type=kind, nargs="+", default=values, help=f"{name} {knob}")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from .common import RESULTS_DIR, machine_info, machine_line, write_results

    args.out = RESULTS_DIR if args.out is None else args.out
    info = machine_info() | {"ann_libraries": library_versions()}
    info["load_avg_start"] = os.getloadavg()[0]
    print(f"{args.name}: {machine_line(info)}; {info['ann_libraries']}", flush=True)
    wall_start = time.perf_counter()
    notes = []
    with threadpool_limits(args.threads):
        start = time.perf_counter()
        codes, queries, data = make_codes(args)
        data["seconds"] = time.perf_counter() - start
        if data["note"]:
            notes.append(data["note"])
        print(
            f"codes {codes.shape}, queries {queries.shape} in {data['seconds']:.0f} s", flush=True
        )
        rows = exact_rows(args, codes, queries)
    truth = rows.pop()
    for name in selected(args.libraries):
        module = INDEXES[name][0]
        if not installed(module):
            notes.append(
                f"{name} skipped: `{module}` is not installed (pip install {INSTALL[module]})"
            )
            print(notes[-1], flush=True)
            continue
        with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="dimlearn_ann_") as folder:
            np.save(Path(folder) / "codes.npy", codes)
            np.save(Path(folder) / "queries.npy", queries)
            np.save(Path(folder) / "truth.npy", truth)
            knobs = {
                n: getattr(args, f"{n}_{INDEXES[n][1].lower()}".replace("-", "_")) for n in INDEXES
            }
            params = {"threads": args.threads, "k": K, "seed": args.seed, "repeats": args.repeats}
            (Path(folder) / "params.json").write_text(json.dumps(params | {"knobs": knobs}))
            print(f"{name}: building on {len(codes):,} codes ...", flush=True)
            found, failure = run_child(name, folder, args.timeout)
        if failure:
            notes.append(failure)
            print(failure, flush=True)
        rows += [r | {"kind": "ann"} for r in found]
    sklearn_qps, numpy_qps = rows[1]["qps"], rows[0]["qps"]
    for row in rows:
        row["speedup_sklearn"] = row["qps"] / sklearn_qps
        row["speedup_numpy"] = row["qps"] / numpy_qps
    verdict, pick = recommendation(rows)
    wall = time.perf_counter() - wall_start
    md = markdown(args, argv, info, data, rows, notes, wall, verdict)
    payload = {
        "name": args.name,
        "machine": info,
        "args": vars(args) | {"out": str(args.out)},
        "data": data,
        "k": K,
        "goal": {"recall": GOAL_RECALL, "speedup_vs_sklearn": GOAL_SPEEDUP},
        "wall_seconds": wall,
        "rows": rows,
        "recommended": pick and {"library": pick["library"], "setting": pick["setting"]},
        "recommendation": verdict,
        "notes": notes,
    }
    print(f"wrote {write_results(args.name, payload, md, args.out)}")
    print(verdict)
    return 0


def exact_rows(args, codes, queries) -> list:
    """The numpy and scikit-learn exact rows, then (last) the ground-truth indices."""
    from sklearn.neighbors import NearestNeighbors

    start = time.perf_counter()
    unit = normalise(codes)
    truth = exact_neighbours(unit, normalise(queries))
    seconds = time.perf_counter() - start
    del unit
    numpy_row = {
        "library": "numpy exact",
        "kind": "exact",
        "setting": "chunks of 64 queries",
        "index": "normalised codes",
        "n": len(codes),
        "n_queries": len(queries),
        "threads": args.threads,
        "build_s": 0.0,
        "index_mib": None,
        "query_s": seconds,
        "qps": len(queries) / seconds,
        "recall": 1.0,
        "load_avg": os.getloadavg()[0],
    }
    print(f"numpy exact: {numpy_row['qps']:.0f} q/s", flush=True)
    m = min(args.n_sklearn, len(queries))
    start = time.perf_counter()
    search = NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute").fit(codes)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    found = search.kneighbors(queries[:m], return_distance=False)
    seconds = time.perf_counter() - start
    sklearn_row = {
        "library": "scikit-learn brute",
        "kind": "exact",
        "setting": "metric=cosine",
        "index": "NearestNeighbors(algorithm='brute')",
        "n": len(codes),
        "n_queries": m,
        "threads": args.threads,
        "build_s": build_s,
        "index_mib": None,
        "query_s": seconds,
        "qps": m / seconds,
        "recall": recall_at_k(found, truth[:m]),
        "load_avg": os.getloadavg()[0],
    }
    del search
    print(f"scikit-learn brute: {sklearn_row['qps']:.0f} q/s on {m} queries", flush=True)
    return [numpy_row, sklearn_row, truth]


if __name__ == "__main__":
    sys.exit(main())
