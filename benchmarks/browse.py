"""The page of `dimlearn browse` at scale: folder size, time to first draw, frame times.

    python -m benchmarks.browse                      # 100,000 CIFAR-10 images, ~10 minutes
    python -m benchmarks.browse --n 3000 --name browse_3k

Takes the 50,000 CIFAR-10 training images and their mirror images (``--n`` of them), fits
a default model for ``--fit-seconds`` on 10,000 of them (or loads ``--model``), and writes
the page with :func:`dimlearn.plot.browse` (PCA map, 10 neighbours, labels). Then, in
headless Chromium (the system's, driven by Playwright), it opens the page from disk
``--loads`` times, each in a fresh browser, and reads what the page reports: the time from
navigation to the end of its first map draw, and to its neighbour lists. It then pans the
whole map (every point drawn as a dot) and a zoomed-in view (images drawn) with the mouse,
and records how long each frame's drawing took, and how many sprite sheets were loaded.
``--synthetic`` uses random images instead of CIFAR-10 (for a quick run of the harness).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dimlearn import DeepInfomaxTransformer, load
from dimlearn.plot import browse

from .common import (
    RESULTS_DIR,
    command_line,
    load_dataset,
    machine_info,
    machine_line,
    markdown_table,
    write_results,
)

VIEWPORT = {"width": 1280, "height": 800}


def collection(n: int, synthetic: bool):
    """``n`` images, their labels and names: CIFAR-10's training images, then their mirror
    images (or random images)."""
    if synthetic:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        return images, rng.integers(0, 10, n), [f"random/{i:06d}.png" for i in range(n)], None
    X, y, _, _, classes = load_dataset("cifar10", None, 0, seed=0)
    images = np.concatenate([X, X[:, :, ::-1]])[:n]
    labels = np.array(classes)[np.concatenate([y, y])[:n]]
    names = [f"train/{i:05d}.png" for i in range(len(X))]
    names += [f"train_mirrored/{i:05d}.png" for i in range(len(X))]
    return images, labels, names[:n], classes


def folder_sizes(folder: Path) -> dict:
    sizes = {"total": 0, "sprites": 0, "data": 0, "codes.npy": 0, "other": 0}
    for path in folder.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            sizes["total"] += size
            part = path.relative_to(folder).parts[0]
            sizes[part if part in sizes else "other"] += size
    for name in ("neighbours", "points", "names", "meta"):
        sizes[f"data/{name}.js"] = (folder / "data" / f"{name}.js").stat().st_size
    return sizes


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


def measure_page(page: Path, loads: int, pan_seconds: float = 4.0) -> dict:
    """Load times, frame times while panning, sheets loaded; None where no Chromium."""
    from playwright.sync_api import sync_playwright

    found = chromium_path()
    results = {"loads": [], "chromium": None}
    with sync_playwright() as playwright:
        for attempt in range(loads):
            browser = playwright.chromium.launch(executable_path=found, headless=True)
            results["chromium"] = browser.version
            tab = browser.new_page(viewport=VIEWPORT)
            errors = []
            tab.on("console", lambda m, errors=errors: m.type == "error" and errors.append(m.text))
            tab.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            start = time.perf_counter()
            tab.goto(page.as_uri())
            tab.wait_for_function("window.dimBrowse && dimBrowse.ready", timeout=120_000)
            ready_wall = time.perf_counter() - start
            tab.wait_for_function("dimBrowse.neighboursLoaded()", timeout=120_000)
            timing = tab.evaluate("dimBrowse.timing")
            results["loads"].append(
                {
                    "first_draw_ms": timing["firstDraw"],
                    "data_ms": timing["data"],
                    "neighbours_ms": timing["neighbours"],
                    "wall_to_ready_s": ready_wall,
                    "errors": errors,
                }
            )
            if attempt == loads - 1:
                results.update(pan(tab, pan_seconds))
                results["js_heap_mb"] = tab.evaluate(
                    "performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null"
                )
                results["errors"] = errors
            browser.close()
    return results


PAN = """async ([seconds, radius]) => {
  // pan around a circle of `radius` CSS px, one step a frame, as a drag does; frames/s
  const v = dimBrowse.view(), zoom = v.scale / v.fitScale, r = radius / v.scale;
  dimBrowse.frames.length = 0;
  let frames = 0;
  const start = performance.now();
  await new Promise((done) => {
    function step(now) {
      const angle = ((now - start) / 1000) * Math.PI;  // half a turn a second
      dimBrowse.setView(v.cx + r * Math.cos(angle) - r, v.cy + r * Math.sin(angle), zoom);
      frames++;
      if (now - start < seconds * 1000) requestAnimationFrame(step); else done();
    }
    requestAnimationFrame(step);
  });
  const fps = frames / ((performance.now() - start) / 1000);
  dimBrowse.setView(v.cx, v.cy, zoom);
  return fps;
}"""


def pan_stats(tab, view: str, seconds: float = 4.0, radius: float = 300.0) -> dict:
    """Frames per second while panning (the layer of images is drawn again each time the
    pan reaches its edge, about every 200-300 px), and how long each frame took to draw."""
    fps = tab.evaluate(PAN, [seconds, radius])
    frames = tab.evaluate("dimBrowse.frames")
    last = tab.evaluate("dimBrowse.lastFrame")
    zoom = tab.evaluate("dimBrowse.view().scale / dimBrowse.view().fitScale")
    what = "images" if last["images"] else "dots"
    return {
        "view": f"{view}, zoom x{zoom:.0f} ({last['inView']:,} {what})",
        "fps": fps,
        "median_ms": statistics.median(frames),
        "p95_ms": float(np.percentile(frames, 95)),
        "max_ms": max(frames),
        "in_view": last["inView"],
        "images": last["images"],
    }


def pan(tab, seconds: float) -> dict:
    settle = int(min(2000, 500 * seconds))  # ms for sprite sheets to load
    rows = [pan_stats(tab, "whole map", seconds)]
    # zoom in on the middle with the mouse wheel until images are drawn; sheets load
    tab.mouse.move(VIEWPORT["width"] / 2, VIEWPORT["height"] / 2)
    for _ in range(60):
        if tab.evaluate("dimBrowse.lastFrame.images"):
            break
        tab.mouse.wheel(0, -100)
        tab.wait_for_timeout(50)
    tab.wait_for_timeout(settle)
    rows.append(pan_stats(tab, "images appear", seconds))
    tab.mouse.wheel(0, -460)  # twice the zoom
    tab.wait_for_timeout(settle)
    rows.append(pan_stats(tab, "closer", seconds))
    return {"pans": rows, "sheets_loaded": tab.evaluate("dimBrowse.sheetsLoaded()")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images (100000)")
    parser.add_argument("--model", default=None, help="a model file (else one is fitted)")
    parser.add_argument("--fit-seconds", type=float, default=60.0)
    parser.add_argument("--loads", type=int, default=3, help="page loads, each in a new browser")
    parser.add_argument("--pan-seconds", type=float, default=4.0, help="each pan lasts (4)")
    parser.add_argument("--synthetic", action="store_true", help="random images, not CIFAR-10")
    parser.add_argument("--keep", default=None, help="write the page here and keep it")
    parser.add_argument("--name", default="browse")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    images, labels, names, _ = collection(args.n, args.synthetic)
    if args.model:
        model = load(args.model)
    else:
        model = DeepInfomaxTransformer(max_time=args.fit_seconds, random_state=0)
        model.fit(images[: min(len(images), 10_000)])
    started = time.perf_counter()
    codes = model.transform(images)
    transform_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep) if args.keep else Path(scratch) / "page"
        started = time.perf_counter()
        page = browse(model, images, folder, paths=names, labels=labels, codes=codes)
        write_s = time.perf_counter() - started
        sizes = folder_sizes(folder)
        n_sheets = len(list((folder / "sprites").glob("*.jpg")))
        browser = {"skipped": "no Chromium found (apt-get install chromium)"}
        load_before = os.getloadavg()  # other work on the machine slows the browser too
        if chromium_path():
            try:
                browser = measure_page(page, args.loads, args.pan_seconds)
            except ImportError:
                browser = {"skipped": "playwright is not installed"}

    info = machine_info()
    try:
        from importlib.metadata import version

        info["playwright"] = version("playwright")
    except Exception:  # not installed
        info["playwright"] = None
    payload = {
        "command": command_line("benchmarks.browse", argv),
        "machine": info,
        "n": len(images),
        "data": "random images" if args.synthetic else "CIFAR-10 train + mirrored",
        "transform_s": transform_s,
        "write_s": write_s,
        "sizes": sizes,
        "sprite_sheets": n_sheets,
        "browser": browser,
        "load_average_before_browser": load_before,
    }
    loads = browser.get("loads", [])
    mb = {key: value / 1e6 for key, value in sizes.items()}
    rows = [{"what": key, "mb": value} for key, value in mb.items()]
    lines = [
        f"# The browse page at {len(images):,} images: `{payload['command']}`",
        "",
        machine_line(info) + f"; dimlearn {info['dimlearn']}.",
        f"Chromium {browser.get('chromium')} (headless, no GPU), Playwright {info['playwright']}; "
        f"load average {load_before[0]:.1f} when the browser started."
        if loads
        else f"Browser: {browser.get('skipped')}.",
        "",
        f"{payload['data']}, 32x32 pixels; PCA map, 10 neighbours (cosine), labels. "
        f"Codes computed in {transform_s:.0f} s; the folder written in {write_s:.1f} s.",
        "",
        "## Folder size",
        "",
        markdown_table(rows, [("what", "part"), ("mb", "MB", ".1f")]),
    ]
    if loads:
        first = [load["first_draw_ms"] / 1000 for load in loads]
        lines += [
            "## In the browser",
            "",
            f"Time to the first map draw (navigation start to the end of the draw, as the page "
            f"reports it), {len(loads)} loads each in a fresh browser: "
            + ", ".join(f"{s:.2f} s" for s in first)
            + f" (median {statistics.median(first):.2f} s); the neighbour lists are ready at "
            + ", ".join(f"{load['neighbours_ms'] / 1000:.2f} s" for load in loads)
            + ". Console errors: "
            + str(sum(len(load["errors"]) for load in loads))
            + ".",
            "",
            f"Panning (one step a frame around a circle of 300 px, for {args.pan_seconds:g} s):",
            "",
            markdown_table(
                browser["pans"],
                [
                    ("view", "view"),
                    ("fps", "frames/s", ".0f"),
                    ("median_ms", "median draw ms", ".1f"),
                    ("p95_ms", "p95 ms", ".1f"),
                    ("max_ms", "max ms", ".1f"),
                ],
            ),
            f"Sprite sheets loaded after these pans: {browser['sheets_loaded']} of "
            f"{n_sheets}. JS heap: {browser['js_heap_mb']:.0f} MB.",
            "",
        ]
    path = write_results(args.name, payload, "\n".join(lines), args.out_dir)
    print(path.read_text())


if __name__ == "__main__":
    main()
