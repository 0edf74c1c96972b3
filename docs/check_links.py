"""Check every link inside a built site: each relative ``href`` and ``src`` of every page
must name a file of the site, and each ``#fragment`` an ``id`` on the page it points to.

Sphinx's own ``linkcheck`` builder is about links to other sites (and needs the internet);
this checks the site itself, offline, after the HTML build::

    python docs/check_links.py docs/_build/html      # exit code 1 and a list when broken

Links to other sites (``http:``, ``https:``, ``mailto:``) are not followed; their
addresses come from ``docs/inventories.py`` or the pages' own text.
"""

from __future__ import annotations

import argparse
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

SKIPPED_SCHEMES = {"http", "https", "mailto", "data", "javascript", "tel", "ftp"}
IGNORED_FILES = {"genindex.html", "search.html", "py-modindex.html"}


class _Page(HTMLParser):
    """The ids a page defines and the links it makes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (attribute, value)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name"):
                self.ids.add(value)
            elif (name == "href" and tag in ("a", "link", "area")) or (
                name == "src" and tag in ("img", "script", "iframe", "source", "video")
            ):
                self.links.append((name, value))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def broken_links(site) -> list[str]:
    """Every link inside ``site`` that points nowhere, as ``page: link (why)`` lines.

    Parameters
    ----------
    site : str or Path
        The folder of a built HTML site (``docs/_build/html``).

    Returns
    -------
    list of str
        Empty when every internal link resolves.
    """
    site = Path(site).resolve()
    pages = sorted(p for p in site.rglob("*.html") if not p.relative_to(site).parts[0] == "_static")
    if not pages:
        return [f"{site}: no HTML pages"]
    parsed: dict[Path, _Page] = {}

    def page_of(path: Path) -> _Page:
        if path not in parsed:
            parsed[path] = _parse(path)
        return parsed[path]

    problems = []
    for path in pages:
        if path.name in IGNORED_FILES:
            continue
        for attribute, value in page_of(path).links:
            parts = urlsplit(value)
            if parts.scheme in SKIPPED_SCHEMES or (parts.scheme and len(parts.scheme) > 1):
                continue
            if parts.netloc:  # //host/...: another site
                continue
            where = f"{path.relative_to(site)}: {attribute}={value!r}"
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if site not in target.parents and target != site:
                problems.append(f"{where} (outside the site)")
                continue
            if not target.is_file():
                problems.append(f"{where} (no such file)")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html" and fragment not in page_of(target).ids:
                problems.append(f"{where} (no id {fragment!r} in {target.relative_to(site)})")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", default=Path(__file__).parent / "_build" / "html")
    args = parser.parse_args(argv)
    problems = broken_links(args.site)
    for line in problems:
        print(line)
    pages = sum(1 for _ in Path(args.site).rglob("*.html"))
    print(f"{len(problems)} broken link(s) in {pages} pages of {args.site}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
