// The 2-D map on a canvas: a sample of the items as dots, coloured by group; drag to select a region
// (in map coordinates, sent to the server, which filters every item, not only the dots); the page's items
// and the selected item are marked.

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];

export class MapView {
  constructor(canvas, onRegion) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onRegion = onRegion;
    this.points = null;
    this.marks = [];
    this.selected = null;
    this.region = null;
    this.drag = null;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = canvas.clientWidth * ratio;
    canvas.height = canvas.clientHeight * ratio;
    this.ctx.scale(ratio, ratio);
    canvas.addEventListener("mousedown", (e) => { this.drag = [this.pos(e), this.pos(e)]; });
    canvas.addEventListener("mousemove", (e) => { if (this.drag) { this.drag[1] = this.pos(e); this.draw(); } });
    window.addEventListener("mouseup", () => this.finishDrag());
  }

  pos(e) {
    const r = this.canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  // map coordinates <-> canvas pixels, with a margin
  toPx(x, y) {
    const [x0, y0, x1, y1] = this.points.bounds;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight, m = 6;
    return [m + (x - x0) / ((x1 - x0) || 1) * (w - 2 * m), h - m - (y - y0) / ((y1 - y0) || 1) * (h - 2 * m)];
  }

  fromPx(px, py) {
    const [x0, y0, x1, y1] = this.points.bounds;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight, m = 6;
    return [x0 + (px - m) / (w - 2 * m) * (x1 - x0), y0 + (h - m - py) / (h - 2 * m) * (y1 - y0)];
  }

  finishDrag() {
    if (!this.drag || !this.points) { this.drag = null; return; }
    const [[ax, ay], [bx, by]] = this.drag;
    this.drag = null;
    if (Math.abs(ax - bx) < 3 && Math.abs(ay - by) < 3) { this.draw(); return; }
    const [x0, y0] = this.fromPx(ax, ay), [x1, y1] = this.fromPx(bx, by);
    this.region = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
    this.draw();
    this.onRegion(this.region);
  }

  clearRegion() { this.region = null; this.draw(); }

  setPoints(points) { this.points = points; this.draw(); }

  setMarks(items) { this.marks = items.map((it) => [it.x, it.y]); this.draw(); }

  setSelected(item) { this.selected = item ? [item.x, item.y] : null; this.draw(); }

  draw() {
    const ctx = this.ctx, w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    ctx.clearRect(0, 0, w, h);
    if (!this.points) return;
    const p = this.points;
    for (let i = 0; i < p.x.length; i++) {
      const [px, py] = this.toPx(p.x[i], p.y[i]);
      ctx.fillStyle = PALETTE[p.group[i] % PALETTE.length];
      ctx.fillRect(px - 1, py - 1, 2.5, 2.5);
    }
    ctx.strokeStyle = "#000";
    for (const [x, y] of this.marks) {
      const [px, py] = this.toPx(x, y);
      ctx.strokeRect(px - 2.5, py - 2.5, 5, 5);
    }
    if (this.selected) {
      const [px, py] = this.toPx(...this.selected);
      ctx.strokeStyle = "#d50000";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(px, py, 7, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.lineWidth = 1;
    }
    const box = this.drag ? [...this.drag[0], ...this.drag[1]]
      : this.region ? [...this.toPx(this.region[0], this.region[1]), ...this.toPx(this.region[2], this.region[3])] : null;
    if (box) {
      ctx.strokeStyle = "#0277bd";
      ctx.setLineDash([4, 3]);
      ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
      ctx.setLineDash([]);
    }
  }
}
