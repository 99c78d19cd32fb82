"""The README's screenshot of ``contrastkit serve``: a real run served and photographed in Debian's chromium.

It labels the run when it has no labels.csv (``contrastkit label RUN
--clusters 10``) and audits it when it has no audit.csv (``contrastkit audit
RUN``), as a user would before reviewing, then serves it on a free loopback
port exactly as ``contrastkit serve`` does, opens the page in headless
chromium (Playwright, ``/usr/bin/chromium``) at a laptop's window size, sorts
the grid by confidence (least sure first), clicks the first image to show its
nearest neighbours, waits for the map to be drawn, and saves the window.

Usage (after ``make demo``):
    python tools/explorer_screenshot.py runs/demo --out docs/explorer.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def prepare(run: Path, clusters: int) -> None:
    """labels.csv and audit.csv in ``run``, made as the CLI makes them when missing."""
    from contrastkit.audit import AUDIT_FILE, audit_run
    from contrastkit.label import label_run

    if not (run / "labels.csv").is_file():
        print(f"labelling {run} ({clusters} k-means clusters)", flush=True)
        label_run(run, clusters=clusters, montages=False)
    if not (run / AUDIT_FILE).is_file():
        print(f"auditing {run}", flush=True)
        audit_run(run)


def screenshot(run: Path, out: Path, width: int, height: int) -> None:
    """Serve ``run`` on a free loopback port and save the explorer's window to ``out`` (PNG)."""
    from playwright.sync_api import sync_playwright

    from contrastkit.commands.serve import bind, serving_in_background, url_of
    from contrastkit.explorer.app import create_app
    from contrastkit.explorer.state import RunState

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(RunState(run, log=lambda s: print(f"  {s}", flush=True)), host="127.0.0.1", port=port)
    errors: list[str] = []
    with serving_in_background(app, sock), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url_of("127.0.0.1", port, app.token))
        page.wait_for_function("() => document.querySelectorAll('#grid .tile img').length > 0")
        page.select_option("select[name=sort]", "confidence")
        page.wait_for_timeout(500)  # the grid reloads sorted
        page.wait_for_function("() => [...document.querySelectorAll('#grid .tile img')].every(i => i.complete && i.naturalWidth > 0)")
        page.locator("#grid .tile").first.click()
        page.wait_for_function("() => document.querySelectorAll('#neighbours .tile img').length > 0")
        page.wait_for_function("() => [...document.querySelectorAll('#neighbours .tile img')].every(i => i.complete && i.naturalWidth > 0)")
        page.wait_for_function("() => document.querySelector('#map').getContext('2d').getImageData(0, 0, 300, 300).data.some(v => v)")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()
    if errors:
        raise SystemExit(f"the page reported errors: {errors}")
    print(f"wrote {out} ({width}x{height})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", default=Path("runs/demo"), help="run folder (default: runs/demo)")
    parser.add_argument("--out", type=Path, default=Path("docs/explorer.png"))
    parser.add_argument("--clusters", type=int, default=10, help="k-means clusters when the run has no labels.csv")
    parser.add_argument("--width", type=int, default=1366)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is absent: apt-get install chromium")
    prepare(args.run, args.clusters)
    screenshot(args.run, args.out, args.width, args.height)


if __name__ == "__main__":
    main()
