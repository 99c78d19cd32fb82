"""One self-contained HTML report of a run: ``contrastkit report RUN`` -> ``RUN/report.html``.

The page needs nothing but itself: figures are PNG data URIs, the CSS is
inline, there is no JavaScript and no external link, so it opens in any
browser, offline, and can be mailed as one file. Every string from the run
(class names, sources, configuration values) is HTML-escaped.

Sections: configuration (config.json), training curves (log.jsonl), metrics
against the baselines (metrics.json, written by ``evaluate`` first if
missing), per-class accuracy and the confusion matrix of the kNN (k=20)
prediction of the test split from the train split, the 2-D map, nearest
neighbours, cluster montages with their auto-labels (labels.csv, else a
k-means run of :func:`contrastkit.label.label_clusters` in memory),
saliency examples and, when ``RUN/generator/`` holds a generator
(``contrastkit train-generator``), a grid of images sampled from it with a
fixed seed beside the figures of ``RUN/fidelity.json`` and their real-vs-real
floors (``contrastkit fidelity``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from contrastkit.atomic import atomic_write_text
from contrastkit.errors import DataError
from contrastkit.runlock import run_lock

REPORT_FILE = "report.html"
REPORT_MONTAGE_SIZE = 16  # images per cluster montage in the report (8 per row)
REPORT_KNN_K = 20  # k of the kNN prediction behind the confusion matrix (as metrics' knn_top1_k20)
REPORT_GENERATED = 16  # images sampled from RUN/generator for the report's grid (8 per row)
REPORT_GENERATION_STEPS = 50  # Euler steps of each ODE, as `contrastkit generate`'s default
REPORT_GENERATION_GUIDANCE = 1.0  # the conditional model alone, as `contrastkit generate`'s default

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; background: #fff; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #36c; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef2fa; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.note { color: #666; font-style: italic; }
.montages { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 13px; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes too)."""
    return html.escape(str(value), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    """An <img> with the PNG inlined as a base64 data URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return "" if v is None else str(v)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; numbers are right-aligned, everything is escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{esc(_fmt(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{esc(_fmt(c))}</td>" for c in row
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: Any) -> str:
    return f"{x:.2%}" if isinstance(x, float) else "-"


def metrics_table(metrics: dict[str, Any]) -> str:
    """Self-supervised figures beside the raw-pixel and (when run) supervised baselines."""
    ssl, base = metrics.get("ssl", {}), metrics.get("baselines", {})
    sup = base.get("supervised", {})
    rows = [
        ("kNN top-1 (k=20)", ssl.get("knn_top1_k20"), base.get("raw_pixel_knn_top1_k20"), sup.get("knn_top1_k20")),
        ("kNN top-1 (weighted k=200)", ssl.get("knn_top1_k200_weighted"), base.get("raw_pixel_knn_top1_k200_weighted"),
         sup.get("knn_top1_k200_weighted")),
        ("linear probe top-1", ssl.get("linear_probe_top1"), base.get("raw_pixel_linear_probe_top1"), sup.get("test_top1")),
    ]
    return table(["metric", "self-supervised", "raw pixels", "supervised"],
                 [(name, _pct(a), _pct(b), _pct(c)) for name, a, b, c in rows])


def per_class_table(metrics: dict[str, Any]) -> str:
    """Accuracy of each class, one column per evaluator (kNN, linear probe)."""
    per = metrics.get("per_class", {})
    evaluators = list(per)
    classes = list(dict.fromkeys(c for e in evaluators for c in per[e]))
    return table(["class", *evaluators], [(c, *(_pct(per[e].get(c)) for e in evaluators)) for c in classes])


def confusion(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, c: int) -> np.ndarray:
    """(C, C) counts of (true, predicted) of the kNN (k=20, cosine vote) prediction of test from train."""
    from contrastkit.knn import knn_predict

    pred = knn_predict(torch.from_numpy(np.ascontiguousarray(train_x)), torch.from_numpy(train_y),
                       torch.from_numpy(np.ascontiguousarray(test_x)), k=REPORT_KNN_K, num_classes=c).numpy()
    m = np.zeros((c, c), dtype=np.int64)
    np.add.at(m, (test_y, pred), 1)
    return m


def cluster_montages(run_dir: Path, emb: Any, get_images: Any, seed: int = 0) -> tuple[list[tuple[str, bytes]], str]:
    """(caption, PNG) per cluster, and where the clusters come from.

    Clusters are read from labels.csv when present, else k-means (as many
    clusters as classes, else 10) runs in memory. A caption is the group's
    auto-label, plus its most common known class and that class's share.
    """
    from contrastkit.label import LABELS_FILE, label_clusters
    from contrastkit.montage import montage_image, montage_members
    from contrastkit.visualize import read_label_groups

    labels_csv = run_dir / LABELS_FILE
    class_names = emb.meta.get("class_names")
    if labels_csv.is_file():
        groups, names = read_label_groups(labels_csv)
        if len(groups) != len(emb.features):
            raise DataError(f"{labels_csv}: {len(groups)} rows but {len(emb.features)} embeddings; label again")
        source = f"from {LABELS_FILE}"
    else:
        k = len(class_names) if class_names else 10
        k = max(2, min(k, len(emb.features)))
        groups = label_clusters(emb.features, k, seed=seed).clusters
        names = [f"cluster {c}" for c in range(k)]
        source = f"k-means with {k} clusters on the L2-normalised embeddings (no labels used; no labels.csv found)"
    out = []
    members = montage_members(emb.features, groups, len(names), per=REPORT_MONTAGE_SIZE)
    for c, idx in members.items():
        caption = f"{names[c]} ({int((groups == c).sum())} items)"
        if emb.labels is not None:
            known = emb.labels[(groups == c) & (emb.labels >= 0)]
            if len(known):
                top = int(np.bincount(known).argmax())
                top_name = class_names[top] if class_names and top < len(class_names) else str(top)
                caption += f": mostly {top_name} ({(known == top).mean():.0%})"
        sheet = montage_image(np.asarray(get_images(torch.from_numpy(idx))), columns=8)
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        out.append((caption, buf.getvalue()))
    return out, source


def generated_grid(run_dir: Path, n: int = REPORT_GENERATED, seed: int = 0, steps: int = REPORT_GENERATION_STEPS,
                   guidance: float = REPORT_GENERATION_GUIDANCE) -> tuple[bytes, bool]:
    """A PNG grid (8 per row) of ``n`` images from ``RUN/generator``, sampled unconditionally (RCG's sampling),
    and whether the pixel generator is conditional.

    The images are those of ``contrastkit generate RUN --n n --seed seed --steps steps --guidance guidance``.

    Raises:
        CheckpointError: no usable generator (the message says why).
    """
    from contrastkit.generate.sampling import load_generator, sample_unconditional
    from contrastkit.montage import montage_image

    gen = load_generator(run_dir)
    with torch.inference_mode():
        images = sample_unconditional(gen, n, steps, guidance, torch.Generator().manual_seed(seed)).numpy()
    buf = io.BytesIO()
    montage_image(images, columns=min(8, n)).save(buf, format="PNG")
    return buf.getvalue(), gen.conditional


def _generator_training(folder: Path) -> list[tuple[str, Any, Any]]:
    """(model, epochs trained, last epoch's loss) of each generator with a log.jsonl."""
    rows = []
    for model, what in (("rep", "representation generator"), ("pixel", "pixel generator")):
        path = folder / model / "log.jsonl"
        try:
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError):
            continue
        epochs = [r for r in records if isinstance(r, dict) and "epoch" in r]
        if epochs:
            rows.append((what, epochs[-1].get("epoch"), epochs[-1].get("loss")))
    return rows


def fidelity_tables(result: dict[str, Any]) -> str:
    """The figures of a fidelity.json beside their real-vs-real floors, one table per feature space.

    Raises:
        DataError: the file lacks the keys ``contrastkit fidelity`` writes.
    """
    from contrastkit.fidelity import COPY_QUANTILE, FIGURES

    try:
        c, spaces = result["counts"], result["spaces"]
        head = (f"<p>{esc(c['generated'])} generated images ({esc(result.get('generated', ''))}) against "
                f"{esc(c['reference'])} real ({esc(result.get('real', ''))}); floor: the same measures for "
                f"{esc(c['floor'])} other real images (copies: {esc(c['held_out_for_copies'])} held-out images "
                f"against {esc(c['train_for_copies'])} training images).</p>")
        body = []
        for name, fig in spaces.items():
            gen, floor = fig["generated"], fig["real_floor"]
            rows = [(label, fmt.format(gen[key]), fmt.format(floor[key]), better)
                    for key, label, fmt, better in FIGURES if key in gen and key in floor]
            body.append(f"<h4>{esc(name)}</h4>" + table(["measure", "generated", "real floor", "better"], rows))
            if isinstance(gen.get("copy_level"), (int, float)):
                body.append(f"<p>copy level ({100 * COPY_QUANTILE:g}th percentile of train-to-train similarity): "
                            f"{gen['copy_level']:.3f}</p>")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"not a fidelity.json of contrastkit fidelity ({type(e).__name__}: {e})") from None
    return head + "".join(body)


def generation_section(run_dir: Path, seed: int = 0) -> str | None:
    """The report's generation section, or None when ``RUN/generator/`` does not exist."""
    from contrastkit.errors import CheckpointError
    from contrastkit.fidelity import FIDELITY_FILE
    from contrastkit.generate.training import GENERATOR_DIR

    folder = run_dir / GENERATOR_DIR
    if not folder.is_dir():
        return None
    parts = []
    try:
        png, conditional = generated_grid(run_dir, seed=seed)
        how = ("RCG: a representation from the representation generator, then pixels conditioned on it" if conditional
               else "the pixel generator was trained unconditionally, --p-uncond 1")
        parts.append(f"<p>{REPORT_GENERATED} images sampled from the run's generator ({how}), seed "
                     f"{esc(seed)}, {REPORT_GENERATION_STEPS} Euler steps, guidance {REPORT_GENERATION_GUIDANCE:g}: "
                     f"the images of <code>contrastkit generate {esc(run_dir)} --n {REPORT_GENERATED} --seed "
                     f"{esc(seed)} --out DIR</code>.</p>" + img_tag(png, "generated samples"))
    except CheckpointError as e:
        parts.append(_note(f"no samples: {e}"))
    training = _generator_training(folder)
    if training:
        parts.append(table(["model", "epochs trained", "last loss"], training))
    path = run_dir / FIDELITY_FILE
    if path.is_file():
        try:
            tables = fidelity_tables(json.loads(path.read_text(encoding="utf-8")))
            parts.append(f"<h3>Fidelity of generated images ({esc(FIDELITY_FILE)})</h3>" + tables)
        except (OSError, ValueError, DataError) as e:  # a broken file costs its table, not the report
            parts.append(_note(f"{FIDELITY_FILE} not shown: {e}"))
    else:
        parts.append(_note(f"no {FIDELITY_FILE}: score generated images with `contrastkit fidelity RUN SAMPLES` "
                           "to see their figures beside the real-vs-real floors here"))
    return _section("Generation", "\n".join(parts))


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a DataError naming the file when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: not valid JSON ({e}); write it again (train / evaluate)") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>\n{body}\n</section>"


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def build_report(run_dir: str | Path, *, seed: int = 0, max_points: int = 5000, progress: bool = False) -> str:
    """The HTML text of a run's report (evaluates and embeds first when needed)."""
    from contrastkit import __version__
    from contrastkit.evaluation import METRICS_FILE, evaluate_run
    from contrastkit.montage import run_images
    from contrastkit.visualize import confusion_matrix_figure, ensure_embeddings, render_figures

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    config_path = run_dir / "config.json"
    config = _read_json_object(config_path) if config_path.is_file() else None
    emb = ensure_embeddings(run_dir)
    metrics_path = run_dir / METRICS_FILE
    metrics: dict[str, Any] | None = None
    metrics_note = ""
    if metrics_path.is_file():
        metrics = _read_json_object(metrics_path)
    elif config is not None and emb.labels is not None:
        metrics = evaluate_run(run_dir, progress=progress)
    else:
        metrics_note = "no metrics: the items have no labels (or the folder has no config.json), so nothing to evaluate"
    class_names = (metrics or {}).get("class_names") or emb.meta.get("class_names")
    what = ["curves", "map", "neighbours", "saliency"] if (run_dir / "log.jsonl").is_file() else ["map", "neighbours", "saliency"]
    if config is None:
        what = ["map"]
    pngs, skipped = render_figures(run_dir, what, seed=seed, max_points=max_points)

    title = f"contrastkit report: {run_dir.name}"
    parts = [f"<h1>{esc(title)}</h1>"]
    summary = [("run folder", str(run_dir)), ("contrastkit", __version__),
               ("items", f"{len(emb.features)} x {emb.features.shape[1]} embeddings")]
    for key in ("method", "backbone", "data_name", "checkpoint"):
        if emb.meta.get(key):
            summary.append((key, emb.meta[key]))
    parts.append(table(["", ""], summary))
    # The first screen holds what a reader wants first: accuracy against the baselines, the map, a neighbour
    # grid (issue 17); the training curves, per-class figures and the configuration follow.
    if metrics is not None:
        head = f"<p>{esc(metrics.get('data', ''))}: {esc(metrics.get('n_train', ''))} train / {esc(metrics.get('n_test', ''))} test images</p>"
        parts.append(_section("Accuracy against baselines", head + metrics_table(metrics)))
    else:
        parts.append(_section("Accuracy against baselines", _note(metrics_note)))
    parts.append(_section("2-D map of the embeddings (t-SNE)", img_tag(pngs["map"], "2-D map")))
    if "neighbours" in pngs:
        parts.append(_section("Nearest neighbours", "<p>Each row: a test image, then its 8 nearest training "
                              "images by cosine similarity, nearest first.</p>" + img_tag(pngs["neighbours"], "neighbours")))
    if "curves" in pngs:
        parts.append(_section("Training curves", img_tag(pngs["curves"], "training curves")))
    if metrics is not None:
        parts.append(_section("Per-class accuracy (test split)", per_class_table(metrics)))
    train_x, train_y = emb.split("train")
    test_x, test_y = emb.split("test")
    if train_y is not None and test_y is not None and len(train_x) and len(test_x) and (train_y >= 0).all() and (test_y >= 0).all():
        c = max(int(train_y.max()), int(test_y.max())) + 1
        names = [class_names[i] if class_names and i < len(class_names) else str(i) for i in range(c)]
        m = confusion(train_x, train_y, test_x, test_y, c)
        parts.append(_section(
            f"Confusion matrix (kNN, k={REPORT_KNN_K}, test split)",
            img_tag(confusion_matrix_figure(m, names), "confusion matrix")
            + table(["true \\ predicted", *names], [(n, *m[i].tolist()) for i, n in enumerate(names)]),
        ))
    get_images, why = run_images(run_dir, emb.sources) if config is not None else (None, "no config.json")
    if get_images is not None:
        montages, source = cluster_montages(run_dir, emb, get_images, seed=seed)
        body = f"<p>Clusters {esc(source)}; each shows the items nearest its centroid.</p><div class=\"montages\">"
        body += "".join(f"<figure>{img_tag(png, cap)}<figcaption>{esc(cap)}</figcaption></figure>" for cap, png in montages)
        parts.append(_section("Clusters", body + "</div>"))
    else:
        parts.append(_section("Clusters", _note(f"no montages: {why}")))
    if "saliency" in pngs:
        parts.append(_section("Saliency: what makes two images similar", "<p>The gradient of the cosine similarity "
                              "of the two backbone embeddings with respect to the input pixels (|gradient| summed "
                              "over channels, scaled to its maximum), over each image and its nearest neighbour.</p>"
                              + img_tag(pngs["saliency"], "saliency")))
    generation = generation_section(run_dir, seed=seed)
    if generation is not None:
        parts.append(generation)
    if config is not None:
        parts.append(_section("Configuration", configuration_html(config)))
    for name, reason in skipped.items():
        parts.append(_note(f"{name}: skipped ({reason})"))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


# Options that only some methods read (their help strings in config.TrainConfig say which); every other
# option applies to every method. Keys ending in "_" cover every option with that prefix.
METHOD_OPTIONS: dict[str, frozenset[str]] = {
    "temperature": frozenset({"simclr", "supcon", "moco", "nnclr"}),
    "margin": frozenset({"pairwise"}),
    "distance": frozenset({"pairwise"}),
    "barlow_lambda": frozenset({"barlowtwins"}),
    "vicreg_": frozenset({"vicreg"}),
    "momentum": frozenset({"byol", "moco", "dino"}),
    "dino_": frozenset({"dino"}),
    "local_views": frozenset({"dino", "simclr"}),
    "queue_size": frozenset({"moco", "nnclr"}),
    "pred_hidden_dim": frozenset({"byol", "simsiam", "nnclr"}),
}


def option_applies(name: str, method: str | None) -> bool:
    """Whether TrainConfig option ``name`` matters to ``method`` (see :data:`METHOD_OPTIONS`)."""
    for key, methods in METHOD_OPTIONS.items():
        if name == key or (key.endswith("_") and name.startswith(key)):
            return method in methods
    return True


def configuration_html(config: dict[str, Any]) -> str:
    """The run's options that apply to its method, then the others folded away in a ``<details>``."""
    method = config.get("method")
    rows = sorted(config.items())
    used = [(k, v) for k, v in rows if option_applies(k, method)]
    other = [(k, v) for k, v in rows if not option_applies(k, method)]
    body = table(["option", "value"], used)
    if other:
        body += (f"<details><summary>{len(other)} options of other methods (not used by {esc(method)})</summary>"
                 + table(["option", "value"], other) + "</details>")
    return body


def report_run(run_dir: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    """Write the report of a run (default ``RUN/report.html``) atomically; takes :func:`build_report`'s options.

    Holds the run folder's lock (:mod:`contrastkit.runlock`) while it works.
    """
    run_dir = Path(run_dir)
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder")
    with run_lock(run_dir):  # it may embed, evaluate and draw into the run folder (contrastkit.runlock)
        atomic_write_text(path, build_report(run_dir, **options))
    return path
