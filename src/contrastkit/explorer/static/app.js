// The explorer page: a paged grid (pages, filters and sorting are computed by the server), the map,
// neighbours of a clicked or uploaded image, label review with keyboard shortcuts, re-spread, data problems.

import { MapView } from "./map.js";

const PAGE = 60;
const $ = (id) => document.getElementById(id);
const state = { mode: "browse", offset: 0, total: 0, items: [], selected: -1, info: null, region: null };

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const text = await response.text();
  let value;
  try { value = JSON.parse(text); } catch { value = { error: text.trim() }; }
  if (!response.ok) throw new Error(value.error || `${response.status}`);
  return value;
}

function say(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function shownLabel(it) {
  return it.correction ?? it.label ?? it.truth ?? "";
}

function tile(it, score) {
  const cap = score !== undefined ? `${score.toFixed(3)} · #${it.item} ${shownLabel(it)}`
    : `#${it.item} ${shownLabel(it)}${it.confidence !== null ? " " + it.confidence.toFixed(2) : ""}`;
  const node = el("div", { class: "tile", title: `${it.source}\nsplit ${it.split}` + (it.problems.length ? `\n${it.problems.join(", ")}` : "") },
    el("img", { src: `/api/image/${it.item}`, alt: `item ${it.item}`, loading: "lazy" }),
    el("div", { class: "cap" + (it.problems.length ? " bad" : ""), textContent: cap }));
  node.dataset.item = it.item;
  if (it.correction) node.classList.add("corrected");
  if (it.changed) node.classList.add("changed");
  return node;
}

// the score that says how bad an item's problem is, when the grid lists one problem worst first
function problemScore(it) {
  const f = $("filters").elements;
  if (state.mode === "review" || f.sort.value !== "severity" || !f.problem.value) return undefined;
  const [column] = state.info.severity[f.problem.value] ?? [];
  return it.scores?.[column] ?? undefined;
}

function gridTile(it) {
  return tile(it, problemScore(it));
}

function filterQuery() {
  const f = new FormData($("filters"));
  const q = new URLSearchParams();
  for (const [k, v] of f.entries()) if (v !== "") q.set(k, v);
  if (state.region) q.set("region", state.region.map((v) => v.toFixed(4)).join(","));
  return q;
}

async function loadPage() {
  try {
    let items;
    if (state.mode === "review") {
      const r = await api(`/api/review?limit=${PAGE}`);
      items = r.items;
      state.total = items.length;
      state.offset = 0;
      $("review-count").textContent = state.info.has_labels
        ? `${state.info.corrections} corrections saved; least confident first. ` +
          "Keys: a accept, 1-9 choose a label, Backspace undo, j/k next/previous."
        : "No auto-labels yet (labels.csv): run `contrastkit label RUN --clusters K` and start the explorer again.";
    } else {
      const q = filterQuery();
      q.set("offset", state.offset);
      q.set("limit", PAGE);
      const r = await api(`/api/items?${q}`);
      items = r.items;
      state.total = r.total;
    }
    state.items = items;
    const grid = $("grid");
    grid.replaceChildren(...items.map(gridTile));
    $("page-info").textContent = state.total ? `${state.offset + 1}–${state.offset + items.length} of ${state.total}` : "no items";
    $("prev").disabled = state.offset === 0 || state.mode === "review";
    $("next").disabled = state.offset + items.length >= state.total || state.mode === "review";
    map.setMarks(items);
    if (state.mode === "review" && items.length) select(0);
    else state.selected = -1;
  } catch (e) { say(e.message, true); }
}

function renderDetail(it) {
  const choices = el("div", { class: "choices" });
  state.info.choices.forEach((c, n) => {
    const b = el("button", { type: "button", textContent: (n < 9 ? `${n + 1} ` : "") + c, onclick: () => setLabel(it.item, c) });
    if (shownLabel(it) === c) b.classList.add("current");
    choices.append(b);
  });
  if (it.correction) choices.append(el("button", { type: "button", textContent: "undo", onclick: () => setLabel(it.item, null) }));
  const rows = [["item", it.item], ["split", it.split], ["source", it.source], ["auto-label", it.label ?? "–"],
    ["confidence", it.confidence ?? "–"], ["cluster", it.cluster ?? "–"], ["known label", it.truth ?? "–"],
    ["your label", it.correction ?? "–"], ["problems", it.problems.join(", ") || "–"]];
  const scoreNames = {
    similarity: "similarity to nearest", mean_distance: "mean neighbour distance", label_quality: "label quality",
  };
  for (const [k, v] of Object.entries(it.scores ?? {})) if (v !== null) rows.push([scoreNames[k] ?? k, v]);
  $("detail").replaceChildren(
    el("img", { src: `/api/image/${it.item}`, alt: `item ${it.item}` }),
    el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("td", { textContent: k }), el("td", { textContent: String(v) })))),
    el("div", { class: "hint", textContent: state.info.choices.length ? "set the label:" : "" }), choices);
}

function renderNeighbours(list, title) {
  $("neighbours").replaceChildren(
    el("div", { class: "hint", textContent: title }),
    ...list.map((n) => {
      const t = tile(n, n.score);
      t.classList.add("neighbour");
      t.addEventListener("click", () => showItem(n));
      return t;
    }));
}

async function showItem(it) {
  renderDetail(it);
  map.setSelected(it);
  try {
    const r = await api(`/api/neighbours/${it.item}?k=12`);
    renderNeighbours(r.neighbours, `nearest neighbours of #${it.item} (cosine similarity)`);
  } catch (e) { say(e.message, true); }
}

function select(n) {
  if (n < 0 || n >= state.items.length) return;
  state.selected = n;
  for (const t of $("grid").children) t.classList.toggle("selected", Number(t.dataset.item) === state.items[n].item);
  showItem(state.items[n]);
}

async function setLabel(item, label) {
  try {
    const r = await api("/api/labels", { item, label });
    state.info.corrections = r.corrections;
    say(label === null ? `#${item}: correction removed` : `#${item} labelled ${label} (${r.corrections} corrections saved)`);
    const n = state.items.findIndex((it) => it.item === item);
    if (n >= 0) {
      state.items[n] = r.item;
      const old = $("grid").children[n];
      const fresh = gridTile(r.item);
      fresh.addEventListener("click", () => select(n));
      old.replaceWith(fresh);
    }
    renderDetail(r.item);
    if (state.mode === "review" && n >= 0) select(n + 1);
  } catch (e) { say(e.message, true); }
}

async function respread() {
  const button = $("respread");
  const started = performance.now();
  let stage = "";
  const tick = () => {
    const seconds = Math.floor((performance.now() - started) / 1000);
    say(`re-spreading… ${seconds} s${stage ? ` (${stage})` : ""}`);
  };
  const poll = async () => {  // the server's stage while the POST below runs
    try {
      const s = await api("/api/respread/status");
      if (s.running && s.stage) stage = s.stage;
    } catch { /* the status is only a hint; the POST's reply is what counts */ }
  };
  button.disabled = true;
  tick();
  const timer = setInterval(tick, 250);
  const poller = setInterval(poll, 1000);
  try {
    const r = await api("/api/respread", {});
    clearInterval(timer);
    say(`re-spread from ${r.seeds} labels in ${r.seconds.toFixed(1)} s (${r.model}, held-out accuracy ` +
      `${(100 * r.held_out_accuracy).toFixed(1)}%): ${r.changed} items changed label; showing them`);
    state.info = await api("/api/info");
    fillSelect("label", state.info.labels);
    $("filters").elements.changed.checked = true;
    setMode("browse");
  } catch (e) {
    clearInterval(timer);  // (finally runs next, before any tick)
    say(e.message, true);
  } finally {
    clearInterval(timer);
    clearInterval(poller);
    button.disabled = false;
  }
}

async function showProblems() {
  const panel = $("problems-panel");
  const s = state.info.problems;
  if (!s) {
    panel.replaceChildren(el("span", { textContent: "No data problems check yet for these embeddings. " }),
      el("button", { type: "button", textContent: "Run it (contrastkit audit)", onclick: runAudit }));
    return;
  }
  const rows = [["exact_duplicate", "exact duplicates", s.exact_duplicates.items],
    ["near_duplicate", "near duplicates", s.near_duplicates.items],
    ["leak", "train/test leaks", s.leaks.items], ["outlier", "outliers", s.outliers.items]];
  if (s.label_issues) rows.push(["label_issue", "labels that disagree with neighbours", s.label_issues.items]);
  panel.replaceChildren(el("table", {}, ...rows.map(([key, name, count]) => el("tr", {},
    el("td", {}, el("a", { href: "#", textContent: name, onclick: (e) => { e.preventDefault(); showProblem(key); } })),
    el("td", { textContent: String(count) })))),
    el("div", { class: "hint", textContent: "listed worst first: duplicates and leaks by their similarity to the nearest item, " +
      "outliers by their mean distance to their neighbours, labels by their label quality (lowest first)" }),
    el("button", { type: "button", textContent: "check again", onclick: runAudit }));
}

function showProblem(key) {
  fillSelect("problem", state.info.problem_names);
  $("filters").elements.problem.value = key;
  $("filters").elements.sort.value = "severity";
  state.offset = 0;
  loadPage();
}

async function runAudit() {
  say("checking for duplicates, leaks, outliers and label issues…");
  try {
    await api("/api/audit", {});
    state.info = await api("/api/info");
    fillSelect("problem", state.info.problem_names);
    say("data problems check done");
    showProblems();
  } catch (e) { say(e.message, true); }
}

async function upload(file) {
  if (!file) return;
  say(`embedding ${file.name} with the run's encoder…`);
  const data = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  try {
    const r = await api("/api/search", { image: data });
    say(`nearest neighbours of ${file.name}`);
    $("detail").replaceChildren(el("img", { src: data, alt: file.name }), el("p", { textContent: file.name }));
    renderNeighbours(r.neighbours, "nearest neighbours of the uploaded image");
  } catch (e) { say(e.message, true); }
}

function fillSelect(name, values) {
  const s = $("filters").elements[name];
  const keep = s.value;
  s.replaceChildren(s.options[0], ...values.map((v) => el("option", { value: v, textContent: v })));
  s.value = values.map(String).includes(keep) ? keep : "";
}

function setMode(mode) {
  state.mode = mode;
  state.offset = 0;
  for (const m of ["browse", "review", "problems"]) $(`mode-${m}`).classList.toggle("active", m === mode);
  $("review-bar").hidden = mode !== "review";
  $("problems-panel").hidden = mode !== "problems";
  if (mode === "problems") showProblems();
  loadPage();
}

// keys 1-9 choose the first nine classes and 0 the tenth, as on a keyboard's number row
const choiceIndex = (key) => (key === "0" ? 9 : Number(key) - 1);

function onKey(e) {
  if (state.mode !== "review" || e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  const it = state.items[state.selected];
  if (e.key === "j" || e.key === "ArrowRight") select(state.selected + 1);
  else if (e.key === "k" || e.key === "ArrowLeft") select(state.selected - 1);
  else if (!it) return;
  else if (e.key === "a" || e.key === "Enter") {
    const current = it.correction ?? it.label;
    if (state.info.choices.includes(current)) setLabel(it.item, current);
    else say(`#${it.item}: its auto-label ${current} is a cluster number, not a class: choose one with 1-9 or 0`, true);
  }
  else if (e.key === "Backspace") setLabel(it.item, null);
  else if (/^[0-9]$/.test(e.key) && state.info.choices[choiceIndex(e.key)] !== undefined) setLabel(it.item, state.info.choices[choiceIndex(e.key)]);
  else return;
  e.preventDefault();
}

const map = new MapView($("map"), (region) => { state.region = region; state.offset = 0; setMode("browse"); });

async function start() {
  try {
    state.info = await api("/api/info");
  } catch (e) { say(e.message, true); return; }
  const info = state.info;
  $("run").textContent = `${info.run}: ${info.items} items, ${info.dim}-d`;
  fillSelect("split", info.splits);
  fillSelect("label", info.labels);
  fillSelect("cluster", Array.from({ length: info.clusters }, (_, c) => String(c)));
  fillSelect("problem", info.problem_names);
  $("filters").addEventListener("change", (e) => {
    const f = $("filters").elements;
    if (e.target === f.problem && f.problem.value) f.sort.value = "severity";  // a problem: its worst first
    else if (e.target === f.problem && f.sort.value === "severity") f.sort.value = "index";
    if (e.target === f.sort && f.sort.value === "severity" && !f.problem.value) {
      say("worst problem first: choose a problem too", true);
      return;
    }
    state.offset = 0;
    if (state.mode === "review") setMode("browse"); else loadPage();
  });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadPage(); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadPage(); });
  $("grid").addEventListener("click", (e) => {
    const t = e.target.closest(".tile");
    if (t) select(state.items.findIndex((it) => it.item === Number(t.dataset.item)));
  });
  for (const m of ["browse", "review", "problems"]) $(`mode-${m}`).addEventListener("click", () => setMode(m));
  $("respread").addEventListener("click", respread);
  $("clear-region").addEventListener("click", () => { state.region = null; map.clearRegion(); state.offset = 0; loadPage(); });
  $("upload").addEventListener("change", (e) => upload(e.target.files[0]));
  document.addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
  document.addEventListener("dragleave", () => $("drop").classList.remove("over"));
  document.addEventListener("drop", (e) => { e.preventDefault(); $("drop").classList.remove("over"); upload(e.dataTransfer.files[0]); });
  document.addEventListener("keydown", onKey);
  if (!info.has_model) $("drop").hidden = true;
  loadPage();
  try { map.setPoints(await api("/api/map")); } catch (e) { say(e.message, true); }
}

start();
