// The annotation page: open an image, click four points per object, see the contour,
// correct it (Shift+click: part of the object, Alt+click: background; models trained
// with corrective clicks; B / E: paint or erase pixels by hand, any model), in a volume
// follow it through the slices (3-D), save. Everything goes through the local server's /api (dlset_jax/app/server.py).
"use strict";

const PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4",
                 "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990", "#dcbeff"];
const HIT_RADIUS = 8;  // canvas px: a click this close to a point grabs it
const MAX_PX = 64;  // canvas px per image pixel at the deepest zoom
const ZOOM_STEP = 1.25;  // per wheel notch or +/- key
// brush radii in image px, [ and ] step through them (the server's limit: brush.MAX_RADIUS)
const BRUSH_RADII = [0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];

const state = {
  info: null, image: null, axis: 2, z: 0, objects: [], current: -1, revision: 0,
  history: [], bitmap: null, drag: null, pan: null, space: false, hidden: false, busy: 0,
  savedClicks: "[]",
  brush: 0, brushR: 3, stroke: null, pointer: null,  // brush: 0 off, 1 paint, -1 erase
};
// Where the image lies on the canvas (read by the browser test to click on pixels):
// `zoom` times the scale that fits the whole image, centred on image point (cx, cy)
// (null: the image's centre); `scale` canvas px per pixel across, `scale * aspect` down
// (a volume's pixels are as tall as its row spacing against its column spacing).
const view = { scale: 1, aspect: 1, ox: 0, oy: 0, zoom: 1, cx: null, cy: null };
window.dlset = { state, view };

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, options);
  } catch (e) {
    throw new Error(`the server does not answer (${e.message})`);
  }
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}

const postJSON = (path, body) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
}).then((r) => r.json());

// What the server needs of an object (and what undo and the saved annotation keep).
const clicksOf = ({ label, color, axis, slice, points, corrections, propagate, extent, corrections_on,
                    edits, edits_on }) =>
  ({ label, color, axis, slice, points, corrections, propagate, extent, corrections_on, edits, edits_on });
const blank = () => ({ axis: 2, corrections: [], propagate: false, extent: null, corrections_on: {},
                       edits: [], edits_on: {} });
// on the slice shown: drawn, clickable, correctable there
const onView = (o) => o.axis === state.axis && o.slice === state.z;

function colorFor(label) {
  const labels = [...new Set(state.objects.map((o) => o.label))];
  const i = labels.indexOf(label);
  return PALETTE[(i < 0 ? labels.length : i) % PALETTE.length];
}

// ---- images

async function loadImages() {
  const list = (await (await api("/api/images")).json()).images;
  const ul = $("images");
  ul.innerHTML = "";
  for (const im of list) {
    const li = document.createElement("li");
    li.textContent = im.id;
    li.dataset.id = im.id;
    if (im.annotated) li.classList.add("annotated");
    if (state.image && state.image.id === im.id) li.classList.add("open");
    li.onclick = () => openImage(im.id).catch((e) => status(e.message, true));
    ul.appendChild(li);
  }
  if (!list.length) status("No images in the folder: upload one.");
}

// PageDown / PageUp: the next / previous image of the list (the first one if none is open)
function openNeighbour(step) {
  const ids = [...document.querySelectorAll("#images li")].map((li) => li.dataset.id);
  if (!ids.length) return;
  const i = state.image ? ids.indexOf(state.image.id) : -1;
  const j = i < 0 ? 0 : i + step;
  if (j < 0 || j >= ids.length) return status(`no ${step > 0 ? "next" : "previous"} image`);
  openImage(ids[j]).catch((e) => status(e.message, true));
}

const imageMeta = async (id, axis) =>
  (await api(`/api/image?id=${encodeURIComponent(id)}&axis=${axis}`)).json();

// Shows the image sliced along `axis` (a volume's array axis; 2-D images: 2) at slice z
// (null: the middle one), the whole of it in view.
async function showAxis(meta, z) {
  state.image = meta;
  state.axis = meta.axis;
  state.z = z ?? Math.floor(meta.n_slices / 2);
  const sp = meta.spacing;
  view.aspect = sp && sp[0] > 0 && sp[1] > 0 ? Math.min(Math.max(sp[0] / sp[1], 0.05), 20) : 1;
  Object.assign(view, { zoom: 1, cx: null, cy: null });
  $("volume-controls").hidden = meta.n_slices < 2;
  $("axis-choice").hidden = !meta.volume_shape;
  if (meta.volume_shape) {
    $("axis").innerHTML = meta.volume_shape.map((n, a) =>
      `<option value="${a}">axis ${a} (${n} slices)</option>`).join("");
    $("axis").value = state.axis;
  }
  $("slice").max = meta.n_slices - 1;
  $("slice").value = state.z;
  $("slice-value").textContent = state.z;
  renderObjects();
  await loadSlice();
}

// The clicks of the image as opened or last saved: anything else is not saved yet.
const clicksJSON = () => JSON.stringify(state.objects.map(clicksOf));
const unsaved = () => state.image !== null && clicksJSON() !== state.savedClicks;

async function openImage(id) {
  if (unsaved() && !window.confirm(`${state.image.id} has changes that are not saved: ` +
                                   `open ${id} and lose them?`)) return;
  status(`opening ${id} ...`);
  let meta = await imageMeta(id, 2);
  state.objects = [];
  state.current = -1;
  state.history = [];
  state.revision = meta.annotation ? meta.annotation.revision : 0;
  let z = null;
  if (meta.annotation) {  // opened where its first object was clicked
    state.objects = meta.annotation.objects.map((o) => ({ ...blank(), ...o, contours: null, volume: null }));
    const first = state.objects[0];
    if (first && first.axis !== 2) meta = await imageMeta(id, first.axis);
    if (first) z = first.slice;
  }
  state.savedClicks = clicksJSON();
  await showAxis(meta, z);
  await loadImages();
  await Promise.all(state.objects.map((o) => segment(o)));
  status(`${id}: ${meta.width} x ${meta.height}` + (meta.n_slices > 1 ? ` x ${meta.n_slices} slices` : "") +
         (meta.annotation ? `, ${state.objects.length} saved objects (revision ${state.revision})` : "") +
         `; intensities ${meta.intensity}`);
  redraw();
}

async function loadSlice() {
  const z = state.z, lo = $("win-lo").value, hi = $("win-hi").value;
  const axis = state.axis;
  const url = `/api/slice?id=${encodeURIComponent(state.image.id)}&axis=${axis}&z=${z}&lo=${lo}&hi=${hi}`;
  const blob = await (await api(url)).blob();
  // the slider or the axis moved on meanwhile: that slice's answer will come
  if (z !== state.z || axis !== state.axis) return;
  state.bitmap = await createImageBitmap(blob);
  canvas.dataset.shown = z;  // the slice on the canvas (read by the browser test)
  canvas.dataset.axis = axis;
  redraw();
}

// ---- segmentation

async function segment(obj) {
  if (obj.points.length !== 4) return;
  obj.pending = true;
  state.busy += 1;
  canvas.dataset.busy = state.busy;
  if (obj.propagate) status("following the object through the slices ...");
  redraw();
  try {
    const { label, color, ...clicks } = clicksOf(obj);
    const out = await postJSON("/api/segment", { id: state.image.id, ...clicks });
    obj.contours = out.contours;
    obj.area = out.area_px;
    obj.error = null;
    obj.volume = out.slices ? Object.fromEntries(out.slices.map((s) => [s.slice, s])) : null;
    const warn = out.warnings.length ? ` (${out.warnings.join("; ")})` : "";
    if (out.slices) {
      const zs = out.slices.map((s) => s.slice);
      status(`${zs.length} slices (${zs[0]}..${zs[zs.length - 1]}) in ${Math.round(out.ms)} ms; ` +
             `ended below: ${out.stops.below}, above: ${out.stops.above}${warn}`);
    } else status(`contour ready: ${out.area_px} px in ${Math.round(out.ms)} ms${warn}`);
  } catch (e) {
    obj.contours = null;
    obj.volume = null;
    obj.error = e.message;
    status(e.message, true);
  } finally {
    obj.pending = false;
    state.busy -= 1;
    canvas.dataset.busy = state.busy;
    renderObjects();
    redraw();
  }
}

function snapshot() {
  state.history.push(JSON.stringify(state.objects.map(clicksOf)));
  if (state.history.length > 200) state.history.shift();
}

function undo() {
  if (!state.history.length) return status("nothing to undo");
  state.objects = JSON.parse(state.history.pop()).map((o) => ({ ...o, contours: null, volume: null }));
  state.current = -1;
  Promise.all(state.objects.map((o) => segment(o))).then(() => status("undone"));
  renderObjects();
  redraw();
}

function deleteObject(k) {
  snapshot();
  state.objects.splice(k, 1);
  state.current = -1;
  renderObjects();
  redraw();
}

// A new label for object k (its colour: the label's, as for every object of that label).
function renameObject(k) {
  const o = state.objects[k];
  const answer = window.prompt(`new label for "${o.label}"`, o.label);
  if (answer === null) return;
  const label = answer.trim();
  if (!label || label.length > 64) return status("a label is 1 to 64 characters", true);
  if (label === o.label) return;
  snapshot();
  o.label = label;
  o.color = colorFor(label);
  renderObjects();
  redraw();
  status(`object ${k + 1} is now "${label}" (saved with the next Save)`);
}

function newObject() {
  snapshot();
  const label = $("label").value.trim() || "object";
  state.objects.push({ ...blank(), label, color: colorFor(label), axis: state.axis, slice: state.z,
                       points: [], contours: null, volume: null });
  state.current = state.objects.length - 1;
  renderObjects();
}

async function save() {
  if (!state.image) return status("open an image first", true);
  const done = state.objects.filter((o) => o.points.length === 4);
  status(`saving ${done.length} objects ...`);
  const sent = clicksJSON();  // what this save holds, whatever changes while it runs
  try {
    const out = await postJSON("/api/save", {
      id: state.image.id, revision: state.revision,
      objects: done.map(clicksOf),
    });
    state.revision = out.revision;
    state.savedClicks = sent;
    status(`saved (revision ${out.revision}): ${out.files.join(", ")}`);
    canvas.dataset.saved = out.revision;
    loadImages();
  } catch (e) {
    status(`not saved: ${e.message}`, true);
  }
}

// ---- drawing

function layout() {
  const r = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(r.width));
  canvas.height = Math.max(1, Math.round(r.height));
  if (!state.image) return;
  const { width, height } = state.image;
  const fit = Math.min(canvas.width / width, canvas.height / (height * view.aspect), 16);
  view.zoom = Math.min(Math.max(view.zoom, 1), Math.max(1, MAX_PX / fit));
  view.scale = fit * view.zoom;
  // the centre stays on the image, so some of it is always in sight
  view.cx = Math.min(Math.max(view.cx ?? (width - 1) / 2, -0.5), width - 0.5);
  view.cy = Math.min(Math.max(view.cy ?? (height - 1) / 2, -0.5), height - 0.5);
  view.ox = canvas.width / 2 - (view.cx + 0.5) * view.scale;
  view.oy = canvas.height / 2 - (view.cy + 0.5) * view.scale * view.aspect;
}

// Zoom by `factor`, keeping the image point under canvas point (mx, my) where it is.
function zoomAt(factor, mx, my) {
  if (!state.image) return;
  layout();
  const [x, y] = toImage(mx, my);
  view.zoom *= factor;
  layout();  // clamps the zoom: the scale it gives is the one to keep (x, y) under
  view.cx = x + (canvas.width / 2 - mx) / view.scale;
  view.cy = y + (canvas.height / 2 - my) / (view.scale * view.aspect);
  redraw();
}

function zoomFit() {
  Object.assign(view, { zoom: 1, cx: null, cy: null });
  redraw();
}

// image pixel (x, y), centres at integers <-> canvas px
const toCanvas = (x, y) => [view.ox + (x + 0.5) * view.scale, view.oy + (y + 0.5) * view.scale * view.aspect];
const toImage = (cx, cy) => [(cx - view.ox) / view.scale - 0.5, (cy - view.oy) / (view.scale * view.aspect) - 0.5];

function redraw() {
  layout();
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!state.bitmap || !state.image) return;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(state.bitmap, view.ox, view.oy, state.image.width * view.scale,
                state.image.height * view.scale * view.aspect);
  let drawn = 0;
  state.objects.forEach((o, k) => {
    if (o.axis !== state.axis || state.hidden) return;  // another axis, or outlines hidden
    const own = o.slice === state.z;
    // a 3-D object's propagated outline on the other slices it reaches (dashed)
    const there = own ? null : o.volume && o.volume[state.z];
    if (!own && !there) return;
    const lines = own ? o.contours || [] : there.contours;
    if (lines.length) drawn += 1;
    ctx.strokeStyle = o.color;
    ctx.lineWidth = 2;
    ctx.setLineDash(own ? [] : [6, 4]);
    for (const line of lines) {
      ctx.beginPath();
      line.forEach(([x, y], i) => {
        const [cx, cy] = toCanvas(x, y);
        if (i === 0) ctx.moveTo(cx, cy); else ctx.lineTo(cx, cy);
      });
      ctx.closePath();
      ctx.stroke();
    }
    ctx.setLineDash([]);
    if (own) o.points.forEach(([x, y], i) => {
      const [cx, cy] = toCanvas(x, y);
      ctx.fillStyle = o.color;
      ctx.beginPath();
      ctx.arc(cx, cy, k === state.current ? 5 : 4, 0, 2 * Math.PI);
      ctx.fill();
      ctx.fillStyle = "#fff";
      ctx.font = "11px sans-serif";
      ctx.fillText(String(i + 1), cx + 6, cy - 6);
    });
    // corrective clicks: + part of the object (green), - background (red)
    (own ? o.corrections : o.corrections_on[state.z] || []).forEach(([x, y, sign]) => {
      const [cx, cy] = toCanvas(x, y);
      ctx.strokeStyle = sign > 0 ? "#3f3" : "#f33";
      ctx.lineWidth = 3;
      ctx.beginPath();
      ctx.moveTo(cx - 6, cy); ctx.lineTo(cx + 6, cy);
      if (sign > 0) { ctx.moveTo(cx, cy - 6); ctx.lineTo(cx, cy + 6); }
      ctx.stroke();
    });
  });
  if (state.stroke) {  // the stroke being drawn, until the server answers with the mask
    const o = state.objects[state.stroke.obj];
    ctx.fillStyle = state.brush > 0 ? o.color : "#000";
    ctx.globalAlpha = 0.5;
    for (const [x, y, r] of state.stroke.discs) {
      const [cx, cy] = toCanvas(x, y);
      ctx.beginPath();
      ctx.ellipse(cx, cy, r * view.scale, r * view.scale * view.aspect, 0, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
  }
  if (state.brush && state.pointer) {  // the brush's size under the pointer
    const [cx, cy] = state.pointer;
    ctx.strokeStyle = state.brush > 0 ? "#fff" : "#f33";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.ellipse(cx, cy, state.brushR * view.scale, state.brushR * view.scale * view.aspect, 0, 0, 2 * Math.PI);
    ctx.stroke();
  }
  canvas.dataset.contours = state.objects.filter((o) => o.contours && o.contours.length).length;
  canvas.dataset.drawn = drawn;  // outlines on the slice shown (read by the browser test)
}

function renderObjects() {
  const ol = $("objects");
  ol.innerHTML = "";
  state.objects.forEach((o, k) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = o.color;
    li.appendChild(sw);
    const nCorr = o.corrections.length + Object.values(o.corrections_on).reduce((n, c) => n + c.length, 0);
    const edited = o.edits.length || Object.keys(o.edits_on).length;
    const zs = o.volume ? Object.keys(o.volume).map(Number) : [];
    const what = o.error ? `error: ${o.error}` : o.pending ? "segmenting ..." :
      o.points.length < 4 ? `${o.points.length}/4 points` :
      (zs.length ? `3-D, slices ${Math.min(...zs)}..${Math.max(...zs)}` +
                   (o.extent ? ` (given ${o.extent[0] ?? "..."}..${o.extent[1] ?? "..."})` : "")
                 : `${o.area ?? "?"} px`) + (nCorr ? `, ${nCorr} corrections` : "") +
      (edited ? ", brush-edited" : "");
    const where = state.image.volume_shape ? ` (axis ${o.axis}, slice ${o.slice})` :
      state.image.n_slices > 1 ? ` (slice ${o.slice})` : "";
    li.appendChild(document.createTextNode(`${o.label}${where}: ${what} `));
    if (k === state.current) li.classList.add("current");
    const ren = document.createElement("button");
    ren.textContent = "\u270e";
    ren.title = "rename this object (its label)";
    ren.className = "rename";
    ren.onclick = (ev) => { ev.stopPropagation(); renameObject(k); };
    li.appendChild(ren);
    const del = document.createElement("button");
    del.textContent = "x";
    del.title = "delete this object";
    del.onclick = (ev) => { ev.stopPropagation(); deleteObject(k); };
    li.onclick = () => {  // select it; one annotated along another axis: shown there
      state.current = k;
      renderObjects();
      redraw();
      if (o.axis !== state.axis) {
        imageMeta(state.image.id, o.axis).then((meta) => showAxis(meta, o.slice))
          .catch((e) => status(e.message, true));
      }
    };
    li.appendChild(del);
    ol.appendChild(li);
  });
}

// ---- mouse

function hit(cx, cy) {
  for (let k = state.objects.length - 1; k >= 0; k--) {
    const o = state.objects[k];
    if (!onView(o)) continue;
    for (let i = 0; i < o.points.length; i++) {
      const [px, py] = toCanvas(...o.points[i]);
      if (Math.hypot(px - cx, py - cy) <= HIT_RADIUS) return [k, i];
    }
  }
  return null;
}

function eventPos(ev) {
  const r = canvas.getBoundingClientRect();
  return [ev.clientX - r.left, ev.clientY - r.top];
}

canvas.addEventListener("mousedown", (ev) => {
  if (!state.image) return;
  const [cx, cy] = eventPos(ev);
  if (ev.button === 1 || ev.button === 2 || (ev.button === 0 && state.space)) {
    ev.preventDefault();  // the middle button's autoscroll
    state.pan = { mx: cx, my: cy, cx: view.cx, cy: view.cy };
    return;
  }
  if (ev.button !== 0) return;
  // nothing is edited unseen: hidden points are not dragged, nor new ones placed
  if (state.hidden) return status("outlines hidden: H shows them again to edit", true);
  if (state.brush) return startStroke(cx, cy);
  const h = hit(cx, cy);
  if (h) {
    snapshot();
    state.drag = { obj: h[0], pt: h[1], moved: false };
    state.current = h[0];
    renderObjects();
    return;
  }
  const [x, y] = toImage(cx, cy).map(Math.round);
  if (x < 0 || y < 0 || x >= state.image.width || y >= state.image.height) {
    return status("click inside the image", true);
  }
  let o = state.objects[state.current];
  const reaches = o && o.points.length === 4 && o.axis === state.axis &&
    (o.slice === state.z || (o.volume && o.volume[state.z]));
  if ((ev.shiftKey || ev.altKey) && reaches) {
    if (!state.info.model.takes_corrections) {
      return status("this model takes no corrective clicks: drag the four points instead", true);
    }
    snapshot();
    const click = [x, y, ev.shiftKey ? 1 : -1];
    // on a propagated slice: propagation runs again from there (volume.propagate)
    if (o.slice === state.z) o.corrections.push(click);
    else (o.corrections_on[state.z] = o.corrections_on[state.z] || []).push(click);
    renderObjects();
    redraw();
    return segment(o);
  }
  if (!o || o.points.length === 4 || !onView(o)) { newObject(); o = state.objects[state.current]; } else snapshot();
  o.points.push([x, y]);
  renderObjects();
  redraw();
  if (o.points.length === 4) segment(o); else status(`point ${o.points.length} of 4`);
});

// ---- the brush: discs painted into (erased from) the current object's mask on this
// slice, after the model (dlset_jax/app/brush.py)

function startStroke(cx, cy) {
  const o = state.objects[state.current];
  if (!o || o.points.length !== 4 || o.axis !== state.axis || (o.slice !== state.z && !o.propagate)) {
    return status("the brush edits the current object on its own slice (a 3-D object: on any " +
                  "slice): click its four points first, or pick it in the list", true);
  }
  snapshot();
  state.stroke = { obj: state.current, z: state.z, discs: [] };  // z: a key may move the slice
  extendStroke(cx, cy);
}

function extendStroke(cx, cy) {
  const { width, height } = state.image;
  const [x, y] = toImage(cx, cy);
  const p = [Math.min(Math.max(x, -0.5), width - 0.5), Math.min(Math.max(y, -0.5), height - 0.5)];
  const d = state.stroke.discs, last = d[d.length - 1], r = state.brushR;
  // discs at most half a radius apart along the path: a fast stroke leaves no gaps
  const n = last ? Math.ceil(Math.hypot(p[0] - last[0], p[1] - last[1]) / Math.max(r / 2, 0.5)) : 1;
  for (let i = 1; i <= n; i++) {
    const q = last ? [last[0] + (i / n) * (p[0] - last[0]), last[1] + (i / n) * (p[1] - last[1])] : p;
    d.push([Math.round(q[0] * 100) / 100, Math.round(q[1] * 100) / 100, r, state.brush]);
  }
  redraw();
}

function endStroke() {
  const o = state.objects[state.stroke.obj];
  const { z, discs } = state.stroke;
  state.stroke = null;
  if (o.slice === z) o.edits.push(...discs);
  else (o.edits_on[z] = o.edits_on[z] || []).push(...discs);
  renderObjects();
  segment(o);
}

function setBrush(mode) {
  state.brush = state.brush === mode ? 0 : mode;
  canvas.style.cursor = state.brush ? "crosshair" : "";
  redraw();
  status(state.brush ? `${state.brush > 0 ? "paint" : "erase"} brush, radius ${state.brushR} px ` +
         "([ and ] change it; B / E / Esc: back to clicks)" : "clicks place points again");
}

function stepBrush(dir) {
  const i = BRUSH_RADII.indexOf(state.brushR) + dir;
  state.brushR = BRUSH_RADII[Math.min(Math.max(i, 0), BRUSH_RADII.length - 1)];
  redraw();
  status(`brush radius ${state.brushR} px`);
}

canvas.addEventListener("mouseleave", () => { state.pointer = null; redraw(); });

canvas.addEventListener("mousemove", (ev) => {
  state.pointer = eventPos(ev);
  if (state.stroke) return extendStroke(...state.pointer);
  if (state.brush && !state.pan) redraw();
  if (state.pan) {
    const [mx, my] = eventPos(ev);
    view.cx = state.pan.cx - (mx - state.pan.mx) / view.scale;
    view.cy = state.pan.cy - (my - state.pan.my) / (view.scale * view.aspect);
    return redraw();
  }
  if (!state.drag) return;
  const [cx, cy] = eventPos(ev);
  const [x, y] = toImage(cx, cy).map(Math.round);
  const o = state.objects[state.drag.obj];
  o.points[state.drag.pt] = [Math.min(Math.max(x, 0), state.image.width - 1),
                             Math.min(Math.max(y, 0), state.image.height - 1)];
  state.drag.moved = true;
  redraw();
});

window.addEventListener("mouseup", () => {
  state.pan = null;
  if (state.stroke) return endStroke();
  if (!state.drag) return;
  const { obj, moved } = state.drag;
  state.drag = null;
  if (!moved) state.history.pop();
  else segment(state.objects[obj]);
});

canvas.addEventListener("wheel", (ev) => {
  ev.preventDefault();  // the page itself does not scroll under the image
  const [mx, my] = eventPos(ev);
  zoomAt(ev.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, mx, my);
}, { passive: false });
canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());  // right-drag pans

// ---- controls

$("new-object").onclick = () => { newObject(); status("new object: click its four extreme points"); };

// ---- 3-D: the current object followed through the volume, optionally between a first
// and a last slice the user names

function currentComplete() {
  const o = state.objects[state.current];
  if (!o || o.points.length !== 4) {
    status("click an object's four points first (or drag one to select it)", true);
    return null;
  }
  return o;
}

function toggle3d() {
  const o = currentComplete();
  if (!o) return;
  snapshot();
  o.propagate = !o.propagate;
  if (!o.propagate) { o.extent = null; o.corrections_on = {}; o.edits_on = {}; o.volume = null; }
  renderObjects();
  segment(o);
}

function setExtent(end) {
  const o = currentComplete();
  if (!o) return;
  const z = state.z;
  if (o.axis !== state.axis) return status(`the object was clicked along axis ${o.axis}: show that axis`, true);
  const [lo, hi] = o.extent || [null, null];  // an end not named: the object's own end
  if ((end === 0 && z > o.slice) || (end === 1 && z < o.slice)) {
    return status(`the ${end ? "last" : "first"} slice must lie ${end ? "at or above" : "at or below"} ` +
                  `the clicked slice ${o.slice}`, true);
  }
  snapshot();
  o.propagate = true;
  o.extent = end === 0 ? [z, hi] : [lo, z];
  for (const by of [o.corrections_on, o.edits_on]) {  // clicks and edits beyond the new extent go
    for (const s of Object.keys(by).map(Number)) {
      if ((o.extent[0] !== null && s < o.extent[0]) || (o.extent[1] !== null && s > o.extent[1])) {
        delete by[s];
      }
    }
  }
  renderObjects();
  segment(o);
}

$("propagate").onclick = toggle3d;
$("first-slice").onclick = () => setExtent(0);
$("last-slice").onclick = () => setExtent(1);
$("undo").onclick = undo;
$("save").onclick = save;
function showSlice(z) {
  state.z = z;
  $("slice").value = z;
  $("slice-value").textContent = state.z;
  // the current object stays current: the 3-D buttons and clicks on this slice act on it
  renderObjects();
  loadSlice().catch((e) => status(e.message, true));
}
$("slice").oninput = (ev) => showSlice(Number(ev.target.value));
$("axis").onchange = (ev) => {
  ev.target.blur();  // the keys (Up / Down: slices) act on the page again
  imageMeta(state.image.id, Number(ev.target.value)).then((meta) => showAxis(meta, null))
    .then(() => status(`${state.image.n_slices} slices along axis ${state.axis}, ` +
                       `each ${state.image.width} x ${state.image.height}`))
    .catch((e) => status(e.message, true));
};
for (const id of ["win-lo", "win-hi"]) {
  $(id).onchange = () => {
    if (Number($("win-hi").value) <= Number($("win-lo").value)) return status("window: high must be above low", true);
    if (state.image) loadSlice().catch((e) => status(e.message, true));
  };
}
$("upload-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const f = $("upload-file").files[0];
  if (!f) return status("choose a file to upload", true);
  const form = new FormData();
  form.append("file", f);
  try {
    const out = await (await api("/api/upload", { method: "POST", body: form })).json();
    await loadImages();
    await openImage(out.id);
  } catch (e) { status(`upload refused: ${e.message}`, true); }
};
window.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT") return;
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); undo(); }
  else if ((ev.ctrlKey || ev.metaKey) && ev.key === "s") { ev.preventDefault(); save(); }
  else if (ev.key === "n") newObject();
  else if (ev.key === "p" && state.image && state.image.n_slices > 1) toggle3d();
  else if (ev.key === "PageDown" || ev.key === "PageUp") {
    ev.preventDefault();
    openNeighbour(ev.key === "PageDown" ? 1 : -1);
  }
  else if (ev.key === " ") {  // held: the main button pans
    ev.preventDefault();
    if (document.activeElement && document.activeElement.tagName === "BUTTON") document.activeElement.blur();
    state.space = true;
    canvas.style.cursor = "grab";
  }
  else if (!state.image) return;
  else if (ev.key === "+" || ev.key === "=") zoomAt(ZOOM_STEP, canvas.width / 2, canvas.height / 2);
  else if (ev.key === "-") zoomAt(1 / ZOOM_STEP, canvas.width / 2, canvas.height / 2);
  else if (ev.key === "0") zoomFit();
  else if (ev.key === "b") setBrush(1);
  else if (ev.key === "e") setBrush(-1);
  else if (ev.key === "Escape" && state.brush) setBrush(state.brush);
  else if (ev.key === "[") stepBrush(-1);
  else if (ev.key === "]") stepBrush(1);
  else if (ev.key === "h") {  // the image without the outlines, and back
    state.hidden = !state.hidden;
    redraw();
    status(state.hidden ? "outlines hidden (H shows them)" : "outlines shown");
  }
  else if ((ev.key === "Delete" || ev.key === "Backspace") && state.objects[state.current]) {
    deleteObject(state.current);
    status("object deleted (Ctrl+Z brings it back)");
  }
  else if ((ev.key === "ArrowUp" || ev.key === "ArrowDown") && state.image.n_slices > 1) {
    ev.preventDefault();
    const z = state.z + (ev.key === "ArrowUp" ? 1 : -1);
    if (z >= 0 && z < state.image.n_slices) showSlice(z);
  }
});
window.addEventListener("keyup", (ev) => {
  if (ev.key === " ") { state.space = false; canvas.style.cursor = ""; }
});
window.addEventListener("resize", redraw);
window.addEventListener("beforeunload", (ev) => {  // the browser asks before the work is lost
  if (unsaved()) { ev.preventDefault(); ev.returnValue = ""; }
});

(async () => {
  try {
    state.info = await (await api("/api/info")).json();
    const m = state.info.model;
    $("model").textContent = `step ${m.step}, threshold ${m.threshold} (${m.threshold_source}); ` +
      `${m.image_kinds.join(" + ")} images; ` +
      (m.takes_corrections ? "takes corrective clicks" : "takes no corrective clicks (four points per object)");
    await loadImages();
  } catch (e) { status(e.message, true); }
})();
