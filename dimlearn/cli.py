"""The ``dimlearn`` command line: fit, transform, search, report and browse, thin over the library.

    dimlearn fit photos/ --out model.safetensors --size 32 --max-time 600
    dimlearn transform model.safetensors photos/ --out codes.csv
    dimlearn search model.safetensors photos/ --query photos/cat.jpg -k 9 --out grid.png
    dimlearn report model.safetensors photos/ --out report.png
    dimlearn browse model.safetensors photos/ --out photos_map/

IMAGES is a folder of image files (read with :func:`dimlearn.load_images`) or a ``.npy``
array of images (opened memory-mapped). Exit codes: 0 on success, 2 on bad usage or input
(a one-line error on stderr: a missing folder, no images, not a model file...).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import warnings
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from .estimator import DeepInfomaxTransformer
from .images import load_images
from .persistence import load, save
from .settings import SETTINGS

USAGE_ERROR = 2


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def _read_images(source: str, size, mode: str, verbose: bool):
    """Images (uint8, (n, H, W, C)) and their names, from a folder, an image file or a .npy."""
    path = Path(source)
    if path.suffix == ".npy":
        if not path.is_file():
            raise UsageError(f"{source}: no such .npy file")
        images = np.load(path, mmap_mode="r")
        return images, [f"{path.name}[{i}]" for i in range(len(images))]
    if not path.exists():
        raise UsageError(f"{source}: no such folder or file")
    images, paths = load_images(path, size, mode=mode, verbose=verbose)
    return images, paths


def _model_image_size(model: DeepInfomaxTransformer):
    """``size`` and ``mode`` that make images from files match what the model was fitted on."""
    layout = model.layout_
    if layout.kind != "image" or not layout.channels_last:
        raise UsageError(
            "this model was not fitted on (n, H, W, C) images, so image files cannot be fed "
            "to it; pass a .npy shaped like its training data"
        )
    height, width = layout.height_width
    return (height, width), "L" if layout.channels == 1 else "RGB"


def _images_for(model, source: str, verbose: bool):
    size, mode = _model_image_size(model) if not source.endswith(".npy") else (None, "RGB")
    images, names = _read_images(source, size, mode, verbose)
    if source.endswith(".npy") or len(model.sample_shape_) == 3:
        return images, names
    return images[..., 0], names  # grey images fitted as (n, H, W)


def _load_model(path: str) -> DeepInfomaxTransformer:
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such model file")
    return load(path)


def _cmd_fit(args) -> None:
    if args.augment and args.views != 1:
        raise UsageError(
            f"--augment crops and flips the one view of --views 1, but --views {args.views} "
            "trains two views of each image, each already augmented (crop, flip, colour "
            "jitter, greyscale). Add --views 1 to train one augmented view, or drop --augment."
        )
    images, _ = _read_images(args.images, args.size, "L" if args.grey else "RGB", args.verbose)
    params = {name: getattr(args, name) for name, s in SETTINGS.items() if not s.python_only}
    model = DeepInfomaxTransformer(**params).fit(images)
    save(model, args.out, include_training_state=args.include_training_state)
    views = "1 view" if model.views_ == 1 else f"{model.views_} views"
    views += ", mirrored" if model.flip_ else ", not mirrored"
    print(
        f"fitted on {len(images)} images ({model.n_iter_} epochs on {model.device_}, "
        f"{model.precision_}, {views}; final loss {model.loss_curve_[-1]:.4f}); model "
        f"written to {args.out}"
    )


COMMAND_LINE_DEFAULTS = {"random_state": 0, "verbose": 1}
"""Where ``dimlearn fit`` differs from the estimator's defaults: a fixed seed (the same
command gives the same model) and a progress bar."""

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _parser_of(setting):
    """A function from a flag's text to the setting's value, by its constraints."""
    constraints = setting.constraints

    def parse(text: str):
        word = text.strip().lower()
        if None in constraints and word == "none":
            return None
        for constraint in constraints:
            if isinstance(constraint, StrOptions) and constraint.is_satisfied_by(text):
                return text
        if "boolean" in constraints and word in _TRUE + _FALSE:
            return word in _TRUE
        for constraint in constraints:
            integral = (
                constraint == "random_state"
                or constraint == "verbose"
                or (isinstance(constraint, Interval) and constraint.type is Integral)
            )
            real = isinstance(constraint, Interval) and constraint.type is Real
            try:
                if integral and not real:
                    return int(text)
                if real:
                    return float(text)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"{text!r} is not {setting.kind}")

    parse.__name__ = setting.name  # argparse names it in its error message
    return parse


def add_setting_flags(command: argparse.ArgumentParser) -> None:
    """A flag for every setting the command line carries (:mod:`dimlearn.settings`), with
    the estimator's default, and the Python-only ones listed in the epilog."""
    for name, setting in SETTINGS.items():
        if setting.python_only:
            continue
        default = COMMAND_LINE_DEFAULTS.get(name, setting.default)
        help_text = f"{setting.help} ({default})".replace("%", "%%")
        if setting.constraints == ("boolean",):
            command.add_argument(
                setting.flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
            continue
        options = [c for c in setting.constraints if type(c) is StrOptions]
        choices = sorted(options[0].options) if len(setting.constraints) == 1 and options else None
        command.add_argument(
            setting.flag,
            dest=name,
            type=_parser_of(setting),
            default=default,
            choices=choices,
            metavar=None if choices else name.upper(),
            help=help_text,
        )
    python_only = [s for s in SETTINGS.values() if s.python_only]
    command.epilog = (
        "Python-only settings (DeepInfomaxTransformer's parameters without a flag): "
        + "; ".join(f"{s.name} ({s.cli.why})" for s in python_only)
        + "."
    )


def _cmd_transform(args) -> None:
    model = _load_model(args.model)
    images, names = _images_for(model, args.images, args.verbose)
    codes = model.transform(images)
    out = Path(args.out)
    if out.suffix == ".csv":
        with out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", *model.get_feature_names_out()])
            for name, row in zip(names, codes, strict=True):
                writer.writerow([name, *(f"{value:.7g}" for value in row)])
    else:
        np.save(out, codes)
    print(f"{len(codes)} codes of {codes.shape[1]} values written to {out}")


def _cmd_search(args) -> None:
    from sklearn.neighbors import NearestNeighbors

    from .plot import plot_neighbours

    model = _load_model(args.model)
    images, names = _images_for(model, args.images, args.verbose)
    if args.k >= len(images) + 1 or args.k < 1:
        raise UsageError(f"-k {args.k}: the collection has {len(images)} images")
    size, mode = _model_image_size(model)
    missing = [q for q in args.query if not Path(q).is_file()]
    if missing:
        raise UsageError(f"query image not found: {', '.join(missing)}")
    queries, query_names = load_images(args.query, size, mode=mode, errors="raise")
    if len(model.sample_shape_) == 2:
        queries = queries[..., 0]
    codes, query_codes = model.transform(images), model.transform(queries)
    index = NearestNeighbors(n_neighbors=args.k, metric=args.metric).fit(codes)
    distances, found = index.kneighbors(query_codes)
    for name, row, dist in zip(query_names, found, distances, strict=True):
        print(f"{name}:")
        for i, d in zip(row, dist, strict=True):
            print(f"  {d:.4f}  {names[i]}")
    if args.out:
        figure = plot_neighbours(
            images,
            codes,
            np.arange(len(queries)),
            args.k,
            metric=args.metric,
            paths=names,
            query_images=queries,
            query_codes=query_codes,
        )
        figure.savefig(args.out, dpi=100)
        print(f"neighbour grid written to {args.out}")


def _cmd_report(args) -> None:
    from .plot import plot_embedding, plot_history, plot_neighbours

    model = _load_model(args.model)
    figures = {"history": plot_history(model)}  # raises first if matplotlib is missing
    import matplotlib.pyplot as plt

    if args.images:
        images, _ = _images_for(model, args.images, args.verbose)
        labels = _read_labels(args.labels, len(images)) if args.labels else None
        codes = model.transform(images)
        rng = np.random.default_rng(args.seed)
        queries = rng.choice(len(images), size=min(args.queries, len(images)), replace=False)
        k = min(args.k, len(images) - 1)
        figures["neighbours"] = plot_neighbours(images, codes, queries, k, labels=labels)
        figures["embedding"] = plot_embedding(codes, labels, method=args.method)
    out = Path(args.out)
    if out.suffix == ".png":
        _stack_figures(list(figures.values()), out, plt)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name, figure in figures.items():
            figure.savefig(out / f"{name}.png", dpi=100)
    for figure in figures.values():
        plt.close(figure)
    print(f"report ({', '.join(figures)}) written to {out}")


def _cmd_browse(args) -> None:
    from .browse import browse

    model = _load_model(args.model)
    images, names = _images_for(model, args.images, args.verbose)
    labels = _read_labels(args.labels, len(images)) if args.labels else None
    thumbnails = None
    if not args.images.endswith(".npy"):
        side = _picture_side(names, args.thumb_size)
        if side > max(_model_image_size(model)[0]):  # the files are larger: sharper pictures
            thumbnails, _ = load_images(names, side, errors="raise")
    page = browse(
        model,
        images,
        args.out,
        paths=names,
        labels=labels,
        method=args.map,
        metric=args.metric,
        k=args.k,
        thumbnails=thumbnails,
        thumb_size=args.thumb_size,
        random_state=args.seed,
        title=args.title,
    )
    size = sum(p.stat().st_size for p in page.parent.rglob("*") if p.is_file())
    print(
        f"a page of {len(images)} images written to {page} ({size / 2**20:.1f} MiB in all); "
        "open it in a browser"
    )


def _picture_side(paths, largest: int) -> int:
    """The side to show images at: the median shorter side of (up to 64 of) the files, up
    to ``largest``; reading only their headers."""
    from PIL import Image

    sides = []
    for path in paths[:: max(1, len(paths) // 64)][:64]:
        with Image.open(path) as image:
            sides.append(min(image.size))
    return min(largest, int(np.median(sides)))


def _stack_figures(figures, out: Path, plt) -> None:
    """One PNG with the figures one under another (each drawn at its own size)."""
    import io

    tiles = []
    for figure in figures:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        buffer.seek(0)
        tiles.append(plt.imread(buffer))
    width = max(tile.shape[1] for tile in tiles)
    padded = [
        np.pad(tile, ((0, 0), (0, width - tile.shape[1]), (0, 0)), constant_values=1.0)
        for tile in tiles
    ]
    plt.imsave(out, np.concatenate(padded, axis=0))


def _read_labels(source: str, n: int) -> np.ndarray:
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{source}: no such labels file")
    if path.suffix == ".npy":
        labels = np.load(path, allow_pickle=False)
    else:
        labels = np.array([line.strip() for line in path.read_text().splitlines() if line.strip()])
    if len(labels) != n:
        raise UsageError(f"{source} holds {len(labels)} labels for {n} images")
    return labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dimlearn",
        description="Unsupervised image features by Deep InfoMax: fit a model on a folder of "
        "images, turn images into codes, search with them, and look at the results.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="train a model on IMAGES and save it")
    fit.add_argument("images", metavar="IMAGES", help="a folder of image files or a .npy")
    fit.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    fit.add_argument("--size", type=int, default=32, help="side images are fitted to (32)")
    fit.add_argument("--grey", action="store_true", help="read images as greyscale")
    add_setting_flags(fit)
    fit.add_argument(
        "--include-training-state", action="store_true", help="keep what continued training needs"
    )
    fit.add_argument(
        "-q", "--quiet", dest="verbose", action="store_const", const=0, help="same as --verbose 0"
    )
    fit.set_defaults(run=_cmd_fit)

    transform = commands.add_parser("transform", help="write the codes of IMAGES")
    transform.add_argument("model", metavar="MODEL")
    transform.add_argument("images", metavar="IMAGES")
    transform.add_argument(
        "--out", required=True, help="codes.npy, or codes.csv (with the file paths)"
    )
    transform.set_defaults(run=_cmd_transform, verbose=False)

    search = commands.add_parser("search", help="nearest neighbours of query images")
    search.add_argument("model", metavar="MODEL")
    search.add_argument("images", metavar="IMAGES", help="the collection searched")
    search.add_argument("--query", nargs="+", required=True, metavar="IMG")
    search.add_argument("-k", type=int, default=9, help="neighbours per query (9)")
    search.add_argument("--metric", default="cosine", help="cosine (default) or euclidean")
    search.add_argument("--out", default=None, help="a PNG of each query and its neighbours")
    search.set_defaults(run=_cmd_search, verbose=False)

    report = commands.add_parser("report", help="training curves, neighbours, a map of codes")
    report.add_argument("model", metavar="MODEL")
    report.add_argument("images", metavar="IMAGES", nargs="?", default=None)
    report.add_argument("--out", required=True, help="report.png, or a folder for PNGs")
    report.add_argument("--labels", default=None, help="one label per image: .txt or .npy")
    report.add_argument("--method", choices=["pca", "tsne"], default="pca")
    report.add_argument("-k", type=int, default=8, help="neighbours per query (8)")
    report.add_argument("--queries", type=int, default=6, help="query rows (6)")
    report.add_argument("--seed", type=int, default=0)
    report.set_defaults(run=_cmd_report, verbose=False)

    browse = commands.add_parser(
        "browse",
        help="a page to browse IMAGES on a map of their codes",
        description="Write a folder with index.html, a page that opens from disk in a browser "
        "(no server): the map of the codes with the images on it, each image's nearest "
        "neighbours, search by name, lasso selection, classes and training curves.",
    )
    browse.add_argument("model", metavar="MODEL")
    browse.add_argument("images", metavar="IMAGES", help="a folder of image files or a .npy")
    browse.add_argument("--out", required=True, metavar="DIR", help="folder to write the page to")
    browse.add_argument("--labels", default=None, help="one label per image: .txt or .npy")
    browse.add_argument(
        "--map",
        choices=["pca", "tsne", "umap"],
        default="pca",
        help="the 2-D map: PCA, t-SNE, or UMAP (needs dimlearn[umap]) (pca)",
    )
    browse.add_argument("-k", type=int, default=10, help="neighbours listed per image (10)")
    browse.add_argument("--metric", default="cosine", help="cosine (default) or euclidean")
    browse.add_argument(
        "--thumb-size",
        type=int,
        default=64,
        help="largest side of the pictures on the page, px; files smaller than this are shown "
        "at their own size (64)",
    )
    browse.add_argument("--title", default=None, help="the page's title")
    browse.add_argument("--seed", type=int, default=0, help="seeds t-SNE and UMAP (0)")
    browse.set_defaults(run=_cmd_browse, verbose=False)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0, or 2 for bad usage or input)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files, never to a window
    parser = build_parser()
    args = parser.parse_args(argv)
    show_warning = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        args.run(args)
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (silences the flush at exit)
        return 0
    except (UsageError, OSError, ValueError, ImportError, ArithmeticError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"dimlearn {args.command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR
    finally:
        warnings.showwarning = show_warning
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"dimlearn: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
