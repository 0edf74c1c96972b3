"""A page for every benchmark record in ``benchmarks/results/``, written at build time.

Each ``benchmarks/results/NAME.md`` (written by a harness in ``benchmarks/``, with its
command and machine) becomes ``results/records/NAME.md`` in the site, under the label
``record-NAME``, with the dates git knows for the file (first recorded, last changed), its
JSON and its figures as downloads. The pages are generated on every build from the files
themselves, so they cannot drift from them; the folder is git-ignored.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def git_dates(path: Path) -> tuple[str, str] | None:
    """(first recorded, last changed) dates of a file, from git; None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "log", "--follow", "--format=%cs", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out[-1], out[0]) if out else None


def figures_of(md: Path) -> list[Path]:
    """The figures of a record: ``NAME_*.png`` of the record with the longest such NAME
    (``cifar10_30min_klmean_knn_cosine.png`` is ``cifar10_30min_klmean``'s, not
    ``cifar10_30min``'s), and a figure whose name starts the record's
    (``time_to_quality.png`` for ``time_to_quality_defaults``)."""
    stems = [path.stem for path in RESULTS.glob("*.md")]
    found = []
    for png in sorted(RESULTS.glob("*.png")):
        owners = [stem for stem in stems if png.stem.startswith(stem + "_") or png.stem == stem]
        if (owners and max(owners, key=len) == md.stem) or md.stem.startswith(png.stem + "_"):
            found.append(png)
    return found


def record_page(md: Path) -> str:
    """The text of the page for one result file."""
    lines = md.read_text(encoding="utf-8").splitlines()
    heading = next((i for i, line in enumerate(lines) if line.startswith("#")), None)
    title = lines[heading].lstrip("#").strip() if heading is not None else md.stem
    body = lines[heading + 1 :] if heading is not None else lines
    relative = "../../../benchmarks/results"  # from docs/results/records/
    dates = git_dates(md)
    when = (
        f"first recorded {dates[0]}, last changed {dates[1]} (git)"
        if dates
        else "dates: in the project's git history"
    )
    files = [f"{{download}}`{md.name} <{relative}/{md.name}>`"]
    json = md.with_suffix(".json")
    if json.is_file():
        files.append(f"{{download}}`{json.name} <{relative}/{json.name}>`")
    figures = figures_of(md)
    files += [f"{{download}}`{png.name} <{relative}/{png.name}>`" for png in figures]
    provenance = (
        f"Record `benchmarks/results/{md.name}`: {when}. Files: {', '.join(files)}. "
        "The command and the machine are in the text below, as the harness wrote them."
    )
    page_title = f"`{md.stem}`" if title == md.stem else f"`{md.stem}`: {title}"
    page = [f"(record-{md.stem})=", f"# {page_title}", "", provenance, "", *body]
    for png in figures:
        page += ["", f"![{png.stem}]({relative}/{png.name})"]
    return "\n".join(page) + "\n"


def write_records(app, config=None) -> None:
    folder = Path(app.srcdir) / "results" / "records"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for md in sorted(RESULTS.glob("*.md")):
        wanted[folder / md.name] = record_page(md)
    index = [
        "# Benchmark records",
        "",
        "Every file in `benchmarks/results/`, as its harness wrote it: the command, the "
        "machine and the full tables (the [results](../index.md) pages quote them). "
        "Rerun a command from the repository root to reproduce a record.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
        *(path.stem for path in wanted),
        "```",
    ]
    wanted[folder / "index.md"] = "\n".join(index) + "\n"
    for path in set(folder.glob("*.md")) - set(wanted):
        path.unlink()  # a result file that was removed
    for path, text in wanted.items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


def setup(app):
    app.connect("config-inited", write_records)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
