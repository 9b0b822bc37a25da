// smis-jax editor page: paints class ids into a Uint8Array (the source of truth; the canvas only shows it) and
// sends the mask to the local server after each pause in painting. No libraries, nothing loaded from elsewhere.
"use strict";
(() => {
  const DEBOUNCE_MS = 120;   // an update after the painting pauses this long...
  const MAX_WAIT_MS = 400;   // ...or at least this often during a long stroke
  const UNDO_LIMIT = 100;    // masks are 64 KiB each
  const BRUSH_SIZES = [1, 2, 3, 5, 8, 12, 20, 32];

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const st = {
    info: null, size: 256, ids: null, display: null, imageData: null,
    cls: 1, tool: "brush", brush: 12, undo: [], redo: [],
    stroke: null, inFlight: false, pending: false, timer: null, lastSend: 0, errorAt: -1, updates: 0,
    version: 0, refining: false, refines: 0,
  };

  // -- messages ---------------------------------------------------------------------------------------------
  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    st.errorAt = performance.now();
  }
  function clearErrorSince(startedAt) {  // a success clears only errors older than the request that succeeded
    if (st.errorAt >= 0 && st.errorAt < startedAt) { $("error").hidden = true; st.errorAt = -1; }
  }
  $("error").addEventListener("click", () => { $("error").hidden = true; st.errorAt = -1; });

  async function api(path, options) {
    let r;
    try {
      r = await fetch(path, options);
    } catch (e) {
      throw new Error(`the editor's server did not answer (${e.message}); is python -m smis_jax.app still running?`);
    }
    if (!r.ok) {
      let message = `${r.status} ${r.statusText}`;
      try { const j = await r.json(); if (j && j.error) message = j.error; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return r;
  }

  // -- mask <-> JSON ------------------------------------------------------------------------------------------
  function toBase64(u8) {
    let s = "";
    for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    return btoa(s);
  }
  function fromBase64(b64) {
    const s = atob(b64), u8 = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) u8[i] = s.charCodeAt(i);
    return u8;
  }
  const maskJson = () => ({ width: st.size, height: st.size, ids: toBase64(st.ids) });

  // -- drawing ------------------------------------------------------------------------------------------------
  function render() {
    const d = st.imageData.data, c = st.display, ids = st.ids;
    for (let i = 0, j = 0; i < ids.length; i++, j += 4) {
      const k = ids[i] * 3;
      d[j] = c[k]; d[j + 1] = c[k + 1]; d[j + 2] = c[k + 2]; d[j + 3] = 255;
    }
    ctx.putImageData(st.imageData, 0, 0);
  }

  function stamp(x, y, value) {  // a disc of diameter st.brush centred on pixel (x, y)
    const n = st.size, r = st.brush / 2, reach = Math.floor(r), r2 = r * r;
    for (let dy = -reach; dy <= reach; dy++) {
      const yy = y + dy;
      if (yy < 0 || yy >= n) continue;
      for (let dx = -reach; dx <= reach; dx++) {
        const xx = x + dx;
        if (xx >= 0 && xx < n && dx * dx + dy * dy <= r2) st.ids[yy * n + xx] = value;
      }
    }
  }

  function line(x0, y0, x1, y1, value) {
    const steps = Math.max(1, Math.ceil(Math.hypot(x1 - x0, y1 - y0) / Math.max(1, st.brush / 3)));
    for (let s = 1; s <= steps; s++) {
      stamp(Math.round(x0 + (x1 - x0) * s / steps), Math.round(y0 + (y1 - y0) * s / steps), value);
    }
  }

  function floodFill(x, y, value) {  // 4-connected, from pixel (x, y)
    const n = st.size, ids = st.ids, target = ids[y * n + x];
    if (target === value) return false;
    const stack = [y * n + x];
    ids[y * n + x] = value;
    while (stack.length) {
      const p = stack.pop(), px = p % n, py = (p - px) / n;
      if (px > 0 && ids[p - 1] === target) { ids[p - 1] = value; stack.push(p - 1); }
      if (px < n - 1 && ids[p + 1] === target) { ids[p + 1] = value; stack.push(p + 1); }
      if (py > 0 && ids[p - n] === target) { ids[p - n] = value; stack.push(p - n); }
      if (py < n - 1 && ids[p + n] === target) { ids[p + n] = value; stack.push(p + n); }
    }
    return true;
  }

  function pixelAt(e) {
    const rect = canvas.getBoundingClientRect();
    const x = Math.floor((e.clientX - rect.left) * st.size / rect.width);
    const y = Math.floor((e.clientY - rect.top) * st.size / rect.height);
    return [Math.min(st.size - 1, Math.max(0, x)), Math.min(st.size - 1, Math.max(0, y))];
  }
  const paintValue = () => (st.tool === "eraser" ? 0 : st.cls);

  canvas.addEventListener("pointerdown", (e) => {
    if (!st.ids || e.button !== 0) return;
    const [x, y] = pixelAt(e);
    if (st.tool === "fill") {
      const before = st.ids.slice();
      if (floodFill(x, y, st.cls)) { pushUndo(before); changed(); }
      return;
    }
    canvas.setPointerCapture(e.pointerId);
    pushUndo(st.ids.slice());
    st.stroke = [x, y];
    stamp(x, y, paintValue());
    changed();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!st.stroke) return;
    const [x, y] = pixelAt(e);
    line(st.stroke[0], st.stroke[1], x, y, paintValue());
    st.stroke = [x, y];
    changed();
  });
  const endStroke = () => { st.stroke = null; };
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  // -- undo / redo ------------------------------------------------------------------------------------------
  function pushUndo(snapshot) {
    st.undo.push(snapshot);
    if (st.undo.length > UNDO_LIMIT) st.undo.shift();
    st.redo = [];
    syncButtons();
  }
  function undo() {
    if (!st.undo.length) return;
    st.redo.push(st.ids);
    st.ids = st.undo.pop();
    changed();
  }
  function redo() {
    if (!st.redo.length) return;
    st.undo.push(st.ids);
    st.ids = st.redo.pop();
    changed();
  }
  function setMask(ids) {  // a loaded or cleared mask is one undoable step
    pushUndo(st.ids);
    st.ids = ids;
    changed();
  }
  function syncButtons() {
    $("undo").disabled = !st.undo.length;
    $("redo").disabled = !st.redo.length;
  }
  function changed() {
    st.version += 1;  // a refined image of an older version is marked as such
    render();
    syncButtons();
    scheduleUpdate();
  }

  // -- updates ------------------------------------------------------------------------------------------------
  function scheduleUpdate() {
    clearTimeout(st.timer);
    const overdue = st.lastSend + MAX_WAIT_MS - performance.now();
    st.timer = setTimeout(sendUpdate, Math.max(0, Math.min(DEBOUNCE_MS, overdue)));
  }

  async function sendUpdate() {
    if (st.inFlight) { st.pending = true; return; }
    st.inFlight = true;
    st.pending = false;
    const started = performance.now();
    st.lastSend = started;
    $("image").classList.add("stale");
    const body = JSON.stringify({ mask: maskJson(), seed: seedValue(), truncation: Number($("truncation").value) });
    try {
      const r = await api("/api/update", { method: "POST", headers: { "Content-Type": "application/json" }, body });
      const j = await r.json();
      await show(j, performance.now() - started);
      clearErrorSince(started);
    } catch (e) {
      showError(e.message);
    } finally {
      st.inFlight = false;
      if (st.pending) sendUpdate();
    }
  }

  async function show(j, roundTripMs) {
    const img = $("image");
    img.src = "data:image/png;base64," + j.image;
    const row = $("variants");
    while (row.children.length < j.variants.length) {
      const v = document.createElement("img");
      v.alt = `variant ${row.children.length}`;
      row.appendChild(v);
    }
    j.variants.forEach((b64, k) => { row.children[k].src = "data:image/png;base64," + b64; });
    try { await img.decode(); } catch (_) { /* a newer image replaced it */ }
    img.classList.remove("stale");
    st.updates += 1;
    img.dataset.updates = String(st.updates);
    $("status").textContent = `update: ${j.ms.toFixed(0)} ms on the server, ${roundTripMs.toFixed(0)} ms round trip` +
      ` (seed ${j.seed}, ψ ${j.truncation.toFixed(2)}, ${j.variants.length} variants)`;
  }

  // -- refinement: runs on the server beside the updates; painting goes on, the result shows when it is done ------
  async function sendRefine() {
    if (st.refining) return;
    st.refining = true;
    $("refine").disabled = true;
    const version = st.version, started = performance.now();
    const method = $("refine-method").value;
    const steps = Math.max(0, Math.min(1000, Math.round(Number($("refine-steps").value) || 0)));
    $("refine-status").textContent = `refining (${method}, ${steps} steps)…`;
    const body = JSON.stringify({ mask: maskJson(), method, steps });
    try {
      const j = await (await api("/api/refine", { method: "POST", headers: { "Content-Type": "application/json" },
                                                  body })).json();
      const img = $("refined");
      img.src = "data:image/png;base64," + j.image;
      img.hidden = false;
      try { await img.decode(); } catch (_) { /* replaced */ }
      st.refines += 1;
      img.dataset.refines = String(st.refines);
      img.classList.toggle("stale", st.version !== version);
      $("refine-status").textContent = `refined: ${j.method}, ${j.steps} steps, loss ${j.loss[0].toFixed(3)} → ` +
        `${j.loss[1].toFixed(3)}, ${j.ms.toFixed(0)} ms on the server` +
        (st.version !== version ? " (the mask has changed since)" : "");
      clearErrorSince(started);
    } catch (e) {
      $("refine-status").textContent = "";
      showError(e.message);
    } finally {
      st.refining = false;
      $("refine").disabled = false;
    }
  }
  $("refine").addEventListener("click", sendRefine);
  $("refine-method").addEventListener("change", (e) => {
    $("refine-steps").value = e.target.value === "original" ? "200" : "50";
  });

  function seedValue() {
    const v = Number($("seed").value);
    return Number.isInteger(v) && v >= 0 && v <= 2147483647 ? v : 0;
  }

  // -- loading and saving masks -------------------------------------------------------------------------------
  async function loadMask(request) {
    const started = performance.now();
    try {
      const j = await (await request()).json();
      setMask(fromBase64(j.ids));
      clearErrorSince(started);
    } catch (e) {
      showError(e.message);
    }
  }

  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";  // the same file can be chosen again
    if (!file) return;
    const body = await file.arrayBuffer();
    await loadMask(() => api("/api/upload", {
      method: "POST", body, headers: { "Content-Type": "image/png", "X-Filename": encodeURIComponent(file.name) },
    }));
  });
  $("examples").addEventListener("change", async (e) => {
    const name = e.target.value;
    if (name) await loadMask(() => api("/api/example?name=" + encodeURIComponent(name)));
  });

  function download(href, filename) {
    const a = document.createElement("a");
    a.href = href;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }
  $("download-image").addEventListener("click", () => {
    if ($("image").src) download($("image").src, `image_seed${seedValue()}.png`);
  });
  $("download-mask").addEventListener("click", async () => {
    try {
      const r = await api("/api/mask.png", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ mask: maskJson() }),
      });
      const url = URL.createObjectURL(await r.blob());
      download(url, "mask.png");
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      showError(e.message);
    }
  });

  // -- controls -----------------------------------------------------------------------------------------------
  function setTool(tool) {
    st.tool = tool;
    document.querySelectorAll("button.tool").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  }
  function selectClass(c) {
    st.cls = c;
    document.querySelectorAll(".swatch").forEach((b) => b.classList.toggle("active", Number(b.dataset.cls) === c));
    if (st.tool === "eraser") setTool("brush");
  }
  document.querySelectorAll("button.tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  $("brush-size").addEventListener("change", (e) => { st.brush = Number(e.target.value); });
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", () => setMask(new Uint8Array(st.size * st.size)));
  $("seed").addEventListener("input", scheduleUpdate);
  $("reseed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 2147483647));
    scheduleUpdate();
  });
  $("truncation").addEventListener("input", (e) => {
    $("truncation-value").textContent = Number(e.target.value).toFixed(2);
    scheduleUpdate();
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    const k = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); }
    else if ((e.ctrlKey || e.metaKey) && k === "y") { e.preventDefault(); redo(); }
    else if (k === "b") setTool("brush");
    else if (k === "f") setTool("fill");
    else if (k === "e") setTool("eraser");
  });

  // -- start --------------------------------------------------------------------------------------------------
  async function start() {
    const info = await (await api("/api/info")).json();
    st.info = info;
    st.size = info.size;
    canvas.width = canvas.height = info.size;
    st.imageData = ctx.createImageData(info.size, info.size);
    const display = info.colors.map((c) => c.slice());
    if (info.mode === "sparse") display[0] = [250, 250, 250];  // "not annotated": a blank page to scribble on
    st.display = new Uint8Array(display.flat());
    st.ids = new Uint8Array(info.size * info.size);
    st.brush = info.mode === "sparse" ? 3 : 12;
    $("model").textContent = `${info.domain} · ${info.mode} · ${info.n_classes} classes · ${info.checkpoint}`;

    const sizes = $("brush-size");
    for (const s of BRUSH_SIZES) sizes.add(new Option(`${s}px`, String(s), false, s === st.brush));
    const palette = $("palette");
    info.class_names.forEach((name, c) => {
      const b = document.createElement("button");
      b.className = "swatch";
      b.dataset.cls = String(c);
      b.title = `class ${c}: ${name}`;
      const chip = document.createElement("i");
      chip.style.background = `rgb(${display[c].join(",")})`;
      b.append(chip, `${c} ${name}`);
      b.addEventListener("click", () => selectClass(c));
      palette.appendChild(b);
    });
    const examples = $("examples");
    for (const name of info.examples) examples.add(new Option(name, name));
    examples.disabled = !info.examples.length;
    if (!info.refine || !info.refine.length) $("refine-controls").hidden = true;
    else {  // only the methods this export can run
      for (const opt of [...$("refine-method").options]) if (!info.refine.includes(opt.value)) opt.remove();
    }
    selectClass(1);
    render();
    syncButtons();
    await sendUpdate();
    window.smisEditor.ready = true;
  }

  // For tests and scripts: read the painted mask (class ids, row-major) and the state; painting goes through the UI.
  window.smisEditor = {
    ready: false,
    mask: () => Array.from(st.ids),
    get size() { return st.size; },
    get updates() { return st.updates; },
    get busy() { return st.inFlight || st.pending; },
    get refines() { return st.refines; },
  };
  start().catch((e) => showError(`cannot start the editor: ${e.message}`));
})();
