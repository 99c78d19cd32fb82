"""contrastkit serve in a real browser: Playwright driving Debian's chromium (never a downloaded browser)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium)")
TRAIN_ARGS = ["--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]  # as test_index


@pytest.fixture(scope="module")
def served(trained_copy) -> Iterator[tuple[str, Path]]:
    """A real tiny run (trained, embedded, k-means labelled) served on a free loopback port: (URL, run folder)."""
    from contrastkit.commands.serve import bind, serving_in_background, url_of
    from contrastkit.embedding import embed_run
    from contrastkit.explorer.app import create_app
    from contrastkit.explorer.state import RunState
    from contrastkit.label import label_run

    run = trained_copy("serve-browser", *TRAIN_ARGS)
    embed_run(run)
    label_run(run, clusters=10, montages=False)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(RunState(run, map_points=200), host="127.0.0.1", port=port)
    with serving_in_background(app, sock, timeout=30):
        yield url_of("127.0.0.1", port, app.token), run


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, url: str) -> tuple[object, list[str]]:
    """A page at the explorer, and the list its console errors and page errors are collected in."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("() => document.querySelectorAll('#grid .tile img').length >= 60")
    page.wait_for_function("() => [...document.querySelectorAll('#grid .tile img')].slice(0, 12).every(i => i.complete && i.naturalWidth > 0)")
    return page, errors


def _seeds(run: Path) -> list[dict[str, str]]:
    path = run / "seed_labels.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_page_loads_shows_images_and_neighbours_without_console_errors(browser, served, tmp_path):
    url, _ = served
    page, errors = _open(browser, url)
    assert page.url.endswith("/") and "token" not in page.url  # the token went into the cookie
    assert page.locator("#page-info").inner_text().endswith("of 800")
    widths = page.eval_on_selector_all("#grid .tile img", "imgs => imgs.slice(0, 12).map(i => i.naturalWidth)")
    assert widths == [28] * 12  # Fashion-MNIST images, served by row index
    page.locator("#grid .tile").nth(3).click()
    page.wait_for_function("() => document.querySelectorAll('#neighbours .tile').length === 12")
    captions = page.locator("#neighbours .tile .cap").all_inner_texts()
    scores = [float(c.split(" ")[0]) for c in captions]  # the cosine similarity comes first
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    assert "nearest neighbours of #3" in page.locator("#neighbours").inner_text()
    page.wait_for_function("() => document.querySelector('#map').getContext('2d').getImageData(0, 0, 300, 300).data.some(v => v)")
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank
    assert errors == []
    page.close()


def test_correcting_a_label_writes_the_seed_csv(browser, served):
    url, run = served
    page, errors = _open(browser, url)
    page.locator("#grid .tile").nth(5).click()
    page.locator("#detail .choices button", has_text="Sneaker").click()
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('labelled Sneaker')")
    from contrastkit.embedding import read_embeddings

    sources = read_embeddings(run).sources
    assert {"item": sources[5], "label": "Sneaker"} in _seeds(run)
    # review: least confident first, keyboard shortcuts
    page.locator("#mode-review").click()
    page.wait_for_function("() => document.querySelector('#review-count').textContent.includes('least confident')")
    page.wait_for_function("() => document.querySelectorAll('#grid .tile.selected').length === 1")
    first = int(page.locator("#grid .tile.selected").get_attribute("data-item"))
    page.keyboard.press("2")  # the second class name: Trouser
    page.wait_for_function(f"() => document.querySelector('#status').textContent.includes('#{first} labelled Trouser')")
    assert {"item": sources[first], "label": "Trouser"} in _seeds(run)
    selected = int(page.locator("#grid .tile.selected").get_attribute("data-item"))
    assert selected != first  # moved on to the next item
    page.keyboard.press("0")  # 0 is the tenth class name: Ankle boot
    page.wait_for_function(f"() => document.querySelector('#status').textContent.includes('#{selected} labelled Ankle boot')")
    assert {"item": sources[selected], "label": "Ankle boot"} in _seeds(run)
    page.keyboard.press("Backspace")  # undo on the next item: nothing to remove, still no error
    assert errors == []
    page.close()


def test_upload_and_map_region(browser, served, tmp_path):
    url, run = served
    page, errors = _open(browser, url)
    image = page.request.get(url.split("?")[0] + "api/image/650").body()
    path = tmp_path / "query.png"
    path.write_bytes(image)
    assert np.asarray(Image.open(io.BytesIO(image))).shape == (28, 28)
    page.set_input_files("#upload", str(path))
    page.wait_for_function("() => document.querySelector('#neighbours').textContent.includes('uploaded image')")
    assert page.locator("#neighbours .tile").first.get_attribute("data-item") == "650"
    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 150, box["y"] + 150, steps=5)
    page.mouse.up()
    page.wait_for_function("() => !document.querySelector('#page-info').textContent.endsWith('of 800')")
    assert errors == []
    page.close()


def test_respread_disables_its_button_shows_progress_then_time_and_changes(browser, served):
    url, run = served
    page, errors = _open(browser, url)
    base = url.split("?")[0]
    origin = base.rstrip("/")
    for item, label in ((0, "Ankle boot"), (1, "T-shirt/top"), (2, "T-shirt/top"), (3, "Dress")):
        r = page.request.post(base + "api/labels", data={"item": item, "label": label},
                              headers={"Content-Type": "application/json", "Origin": origin})
        assert r.ok, r.text()
    page.locator("#mode-review").click()
    page.wait_for_function("() => document.querySelector('#review-count').textContent.includes('least confident')")
    page.evaluate("""() => {  // every status text with the button's state at that moment
      window.seen = [];
      const s = document.querySelector('#status'), b = document.querySelector('#respread');
      new MutationObserver(() => window.seen.push([s.textContent, b.disabled]))
        .observe(s, { childList: true, characterData: true, subtree: true });
    }""")
    page.locator("#respread").click()
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('items changed label')",
                           timeout=120_000)
    seen = page.evaluate("window.seen")
    assert seen[0][0].startswith("re-spreading… 0 s") and seen[0][1] is True  # disabled while it runs
    final = page.locator("#status").inner_text()
    assert final.startswith("re-spread from ") and " s (" in final
    assert page.locator("#respread").is_disabled() is False
    assert errors == []
    page.close()


def test_data_problems_view_lists_the_worst_first(browser, served):
    import json

    url, run = served
    page, errors = _open(browser, url)
    page.locator("#mode-problems").click()
    page.locator("#problems-panel button", has_text="Run it").click()
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('check done')", timeout=120_000)
    summary = json.loads((run / "audit.json").read_text())
    name, key, column = max([("outliers", "outliers", "mean_distance"),
                             ("labels that disagree with neighbours", "label_issues", "label_quality")],
                            key=lambda t: summary.get(t[1], {}).get("items", 0))
    assert summary[key]["items"] >= 2
    page.locator("#problems-panel a", has_text=name).click()
    page.wait_for_function("() => document.querySelector('#filters').elements.sort.value === 'severity'")
    page.wait_for_function(f"() => document.querySelector('#page-info').textContent.endsWith('of {summary[key]['items']}')")
    scores = [float(c.split(" ")[0]) for c in page.locator("#grid .tile .cap").all_inner_texts()]  # the score first
    assert len(scores) == min(60, summary[key]["items"])
    assert scores == sorted(scores, reverse=column == "mean_distance")  # worst first
    assert errors == []
    page.close()
