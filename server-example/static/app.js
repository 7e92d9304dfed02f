// The page's whole behaviour, without a framework or build step, so the binary can embed it.
//
// The mask canvas has the image's full resolution, so what is sent is the image plus a mask of
// exactly its size. Zoom and pan only move and scale the wrapper that holds the image and the
// canvas (#view) with a CSS transform: strokes are recorded in image pixels whatever the zoom,
// and the brush size means image pixels too. Strokes are kept as vectors and replayed on undo,
// because bitmap snapshots of a 12-megapixel canvas would cost 48 MB each.
//
// Edits form a chain: "Continue from result" makes a result the next edit's input. Each edit
// keeps its own input, strokes and result, so Undo steps back through strokes, then edits.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $('mask');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const stage = $('stage');
  const view = $('view');
  const cursor = $('cursor');
  const INK = 'rgb(255, 0, 72)';
  const INK_RGB = [255, 0, 72];
  // Grow and Shrink move the mask's edge by this many image pixels per click.
  const MASK_TOOL_PX = 4;
  const SIZE_MIN = 2;
  const SIZE_MAX = 400;

  const state = {
    chain: [],    // edits, oldest first: {input, inputUrl, width, height, ops, undone, result}
    at: -1,       // the edit on screen
    rootFormat: 'png', // the format of the photo the chain started from, kept through the chain
    tool: 'brush',
    size: 40,     // brush diameter in image pixels
    stroke: null, // the stroke being drawn, an op once the pointer is up
    strokePointer: null,
    busy: false,
    shown: null,  // the result pane: {src, href, name, eventId, compare, fromChain}
  };
  const edit = () => state.chain[state.at] || null;
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  // Without sign-in (`--auth none`) the page names its own user; signed in, the server knows
  // who we are and a `user_id` would only be checked against it, so none is sent.
  let userId = (() => {
    const key = 'partialconv-user-id';
    let id = localStorage.getItem(key);
    if (!id) {
      id = crypto.randomUUID
        ? crypto.randomUUID()
        : 'u-' + Date.now().toString(36) + Math.random().toString(36).slice(2);
      localStorage.setItem(key, id);
    }
    return id;
  })();

  const userQuery = () => (userId ? `user_id=${encodeURIComponent(userId)}&` : '');

  function setStatus(text, kind) {
    $('status').textContent = text || '';
    if (kind) document.body.dataset.state = kind;
  }

  function updateButtons() {
    const e = edit();
    const strokes = !!(e && e.ops.length);
    // Moving between edits while a request runs would leave its answer without a home.
    $('undo').disabled = state.busy || !(strokes || state.at > 0);
    $('redo').disabled = state.busy || !(e && (e.undone.length || state.at < state.chain.length - 1));
    $('clear').disabled = !strokes;
    for (const id of ['grow', 'shrink', 'invert', 'export-mask']) $(id).disabled = !e;
    $('go').disabled = !e || state.busy;
    $('continue').disabled = state.busy;
  }

  // ---- settings, kept in this browser ----

  const SETTINGS_KEY = 'partialconv-settings';
  const DEFAULT_SETTINGS = { ensemble: '', strategy: 'auto', format: 'same', mask_grow: 0, keep_gps: false };

  function storedSettings() {
    try {
      return { ...DEFAULT_SETTINGS, ...JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}') };
    } catch (_) {
      return { ...DEFAULT_SETTINGS }; // a value from an older page must not break this one
    }
  }

  function settings() {
    return {
      ensemble: $('ensemble').value,
      strategy: $('strategy').value,
      format: $('format').value,
      mask_grow: +$('mask-grow').value,
      keep_gps: $('keep-gps').checked,
    };
  }

  function choose(select, value) {
    const known = [...select.options].some((o) => o.value === value);
    select.value = known ? value : select.options[0].value;
  }

  function showSettings(s) {
    choose($('ensemble'), s.ensemble);
    choose($('strategy'), s.strategy);
    choose($('format'), s.format);
    $('mask-grow').value = clamp(Math.round(+s.mask_grow) || 0, -16, 16);
    $('mask-grow-value').textContent = `${$('mask-grow').value} px`;
    $('keep-gps').checked = !!s.keep_gps;
  }

  for (const id of ['ensemble', 'strategy', 'format', 'mask-grow', 'keep-gps']) {
    $(id).addEventListener('input', () => {
      $('mask-grow-value').textContent = `${$('mask-grow').value} px`;
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings()));
    });
  }

  $('settings-toggle').addEventListener('click', () => {
    const open = $('settings').hidden;
    $('settings').hidden = !open;
    $('settings-toggle').setAttribute('aria-expanded', String(open));
    if (open) loadMetrics();
  });

  // Only what differs from the server's defaults is sent, so a page left alone asks for what
  // the operator configured (a cheaper `--ensemble` on a CPU server, say).
  function appendSettings(form, index) {
    const s = settings();
    if (s.ensemble) form.append('ensemble', s.ensemble);
    if (s.strategy !== 'auto') form.append('strategy', s.strategy);
    // Later edits send a lossless PNG; without `format` their result would be a PNG even
    // when the chain began with a JPEG photo.
    const format = s.format !== 'same' ? s.format : index > 0 ? state.rootFormat : null;
    if (format) form.append('format', format);
    if (s.mask_grow) form.append('mask_grow', String(s.mask_grow));
    if (s.keep_gps) form.append('keep_gps', 'true');
  }

  // ---- the chain of edits ----

  function newEdit(input, inputUrl, width, height) {
    return { input, inputUrl, width, height, ops: [], undone: [], result: null };
  }

  function forget(e) {
    URL.revokeObjectURL(e.inputUrl);
    if (e.result) URL.revokeObjectURL(e.result.url);
  }

  // A new stroke or result in an earlier edit makes the edits after it moot, as any new
  // action does to what Redo would bring back.
  function dropLaterEdits() {
    for (const e of state.chain.splice(state.at + 1)) forget(e);
  }

  // Puts the current edit on screen: its input, its strokes and its result.
  function showEdit() {
    const e = edit();
    $('original').src = e.inputUrl;
    canvas.width = e.width;
    canvas.height = e.height;
    view.style.width = `${e.width}px`;
    view.style.height = `${e.height}px`;
    // Both panes take the picture's shape (app.css), so editor and result line up.
    document.querySelector('main').style.setProperty('--aspect', `${e.width} / ${e.height}`);
    redraw();
    showChainResult();
    applyView();
    updateButtons();
  }

  function startChain(first) {
    state.chain.forEach(forget);
    state.chain = [first];
    state.at = 0;
    state.rootFormat = first.input.type === 'image/jpeg' ? 'jpeg' : 'png';
    $('drop').hidden = true;
    stage.hidden = false;
    $('zoombar').hidden = false;
    zoom.fit = true;
    showEdit();
    setStatus(`${first.width}×${first.height} — brush over what should go.`, 'ready');
  }

  // ---- image loading: button, drag and drop, paste ----

  function loadImage(blob) {
    if (!blob || !/^image\//.test(blob.type)) {
      setStatus('That is not an image.', 'error');
      return;
    }
    const url = URL.createObjectURL(blob);
    const img = $('original');
    img.onload = () => {
      img.onload = img.onerror = null;
      startChain(newEdit(blob, url, img.naturalWidth, img.naturalHeight));
    };
    img.onerror = () => {
      img.onload = img.onerror = null;
      URL.revokeObjectURL(url);
      if (edit()) img.src = edit().inputUrl;
      setStatus('The browser cannot read that image.', 'error');
    };
    img.src = url;
  }

  $('file').addEventListener('change', (e) => {
    loadImage(e.target.files[0]);
    e.target.value = '';
    // Brushing never takes the focus (pointerdown is the canvas's), so without this a space
    // pressed to pan would open the file picker again.
    e.target.blur();
  });

  const left = $('left');
  left.addEventListener('dragover', (e) => {
    e.preventDefault();
    left.classList.add('dragging');
  });
  left.addEventListener('dragleave', () => left.classList.remove('dragging'));
  left.addEventListener('drop', (e) => {
    e.preventDefault();
    left.classList.remove('dragging');
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith('image/'));
    if (file) loadImage(file);
  });

  document.addEventListener('paste', (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.items : [])]
      .find((i) => i.kind === 'file' && i.type.startsWith('image/'));
    if (item) {
      e.preventDefault();
      loadImage(item.getAsFile());
    }
  });

  // ---- the view: zoom and pan ----
  //
  // #view (image and mask at the image's size) sits in the clipping box #stage, moved by
  // (tx, ty) and scaled by z: a stage point is t + z × the image point. The result pane is
  // simply fitted: a second view kept in step would halve the room for the editor on a phone,
  // and holding the result already compares it with the input in place.

  const zoom = { z: 1, tx: 0, ty: 0, fit: true };
  const MAX_ZOOM = 32;
  const ZOOM_STEP = Math.SQRT2; // two presses of + double the zoom
  // Wheel travel (CSS pixels) that doubles the zoom: a mouse notch (about 100) is ×1.26; a
  // trackpad pinch arrives as a wheel with ctrlKey and small deltas, so it gets a faster rate.
  const WHEEL_DOUBLING = 300;
  const PINCH_DOUBLING = 100;

  function fitZoom() {
    const e = edit();
    if (!e || !stage.clientWidth) return 1;
    return Math.min(stage.clientWidth / e.width, stage.clientHeight / e.height);
  }

  // Never smaller than fit or 100 % (whichever is less), never past 32 screen pixels a pixel.
  function zoomLimits() {
    const fit = fitZoom();
    return [Math.min(fit, 1), Math.max(MAX_ZOOM, fit)];
  }

  function applyView() {
    const e = edit();
    if (!e) return;
    zoom.z = zoom.fit ? fitZoom() : clamp(zoom.z, ...zoomLimits());
    const [sw, sh] = [stage.clientWidth, stage.clientHeight];
    const [w, h] = [e.width * zoom.z, e.height * zoom.z];
    // A picture narrower than the box is centred; a wider one cannot leave a gap at an edge.
    zoom.tx = w <= sw ? (sw - w) / 2 : clamp(zoom.tx, sw - w, 0);
    zoom.ty = h <= sh ? (sh - h) / 2 : clamp(zoom.ty, sh - h, 0);
    view.style.transform = `translate(${zoom.tx}px, ${zoom.ty}px) scale(${zoom.z})`;
    view.classList.toggle('pixels', zoom.z >= 2);
    view.classList.toggle('close', zoom.z >= 4);
    $('zoom-level').textContent = `${Math.round(zoom.z * 100)} %`;
    const toggle = $('zoom-toggle');
    toggle.textContent = zoom.fit ? '100 %' : 'Fit';
    toggle.setAttribute('aria-label', zoom.fit ? 'Zoom to 100 %' : 'Fit the picture in view');
    sizeCursor();
  }

  function stagePoint(clientX, clientY) {
    const r = stage.getBoundingClientRect();
    return [clientX - r.left - stage.clientLeft, clientY - r.top - stage.clientTop];
  }

  // Zooms to z, keeping the image point under the stage point (sx, sy) where it is.
  function zoomAt(z, sx, sy) {
    const ix = (sx - zoom.tx) / zoom.z;
    const iy = (sy - zoom.ty) / zoom.z;
    zoom.fit = false;
    zoom.z = clamp(z, ...zoomLimits());
    zoom.tx = sx - ix * zoom.z;
    zoom.ty = sy - iy * zoom.z;
    applyView();
  }

  const stageCentre = () => [stage.clientWidth / 2, stage.clientHeight / 2];
  // Keys zoom around the mouse when it is over the picture, as the wheel does.
  const zoomCentre = () => (pointer.over ? pointer.at : stageCentre());

  function setFit() {
    zoom.fit = true;
    applyView();
  }

  $('zoom-in').addEventListener('click', () => zoomAt(zoom.z * ZOOM_STEP, ...stageCentre()));
  $('zoom-out').addEventListener('click', () => zoomAt(zoom.z / ZOOM_STEP, ...stageCentre()));
  $('zoom-toggle').addEventListener('click', () => (zoom.fit ? zoomAt(1, ...stageCentre()) : setFit()));
  new ResizeObserver(() => applyView()).observe(stage);

  stage.addEventListener('wheel', (e) => {
    if (!edit()) return;
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? stage.clientHeight : 1;
    const rate = e.ctrlKey ? PINCH_DOUBLING : WHEEL_DOUBLING;
    zoomAt(zoom.z * 2 ** (-e.deltaY * unit / rate), ...stagePoint(e.clientX, e.clientY));
  }, { passive: false });

  // ---- pointers: brushing, panning, pinching ----

  const pointer = { over: false, at: [0, 0] }; // a mouse or pen over the stage, in stage px
  const touches = new Map(); // fingers down: pointerId → [clientX, clientY]
  let pinch = null; // two fingers: the image point under their midpoint, their distance, z
  let pan = null; // a mouse pan: {id, x, y}
  let spaceHeld = false;

  // The image pixel under a pointer, from the canvas's box as transformed on screen, so it is
  // exact at any zoom and pan.
  function toImage(e) {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  }

  function sizeCursor() {
    cursor.style.width = cursor.style.height = `${Math.max(3, state.size * zoom.z)}px`;
  }

  function moveCursor(e) {
    const [x, y] = stagePoint(e.clientX, e.clientY);
    pointer.at = [x, y];
    cursor.hidden = spaceHeld || !!pan;
    cursor.style.left = `${x}px`;
    cursor.style.top = `${y}px`;
  }

  function setSpace(on) {
    spaceHeld = on;
    stage.classList.toggle('pan', on);
    if (on) cursor.hidden = true;
  }

  function startStroke(e) {
    e.preventDefault();
    stage.setPointerCapture(e.pointerId);
    // A pen's eraser end erases whatever tool is selected.
    const mode = e.button === 5 ? 'eraser' : state.tool;
    state.stroke = { type: 'stroke', mode, width: state.size, points: [toImage(e)] };
    state.strokePointer = e.pointerId;
    drawStroke(state.stroke, 0);
  }

  function extendStroke(e) {
    const from = state.stroke.points.length;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) state.stroke.points.push(toImage(ev));
    drawStroke(state.stroke, from);
  }

  function endStroke() {
    const op = state.stroke;
    state.stroke = null;
    if (op) push(op);
  }

  // A stroke that turned out to be the first finger of a pinch was never meant.
  function cancelStroke() {
    if (!state.stroke) return;
    state.stroke = null;
    redraw();
  }

  function startPan(e) {
    e.preventDefault();
    stage.setPointerCapture(e.pointerId);
    pan = { id: e.pointerId, x: e.clientX, y: e.clientY };
    stage.classList.add('panning');
    cursor.hidden = true;
  }

  function movePan(e) {
    zoom.tx += e.clientX - pan.x;
    zoom.ty += e.clientY - pan.y;
    pan.x = e.clientX;
    pan.y = e.clientY;
    applyView();
  }

  function fingers() {
    const [[x1, y1], [x2, y2]] = touches.values();
    const [cx, cy] = stagePoint((x1 + x2) / 2, (y1 + y2) / 2);
    return { cx, cy, d: Math.max(1, Math.hypot(x2 - x1, y2 - y1)) };
  }

  function startPinch() {
    const f = fingers();
    pinch = { d: f.d, z: zoom.z, ix: (f.cx - zoom.tx) / zoom.z, iy: (f.cy - zoom.ty) / zoom.z };
  }

  // Zoom follows the fingers' spread and the image point first under their midpoint follows
  // the midpoint: pinch and two-finger pan are one gesture.
  function movePinch() {
    const f = fingers();
    zoom.fit = false;
    zoom.z = clamp(pinch.z * f.d / pinch.d, ...zoomLimits());
    zoom.tx = f.cx - pinch.ix * zoom.z;
    zoom.ty = f.cy - pinch.iy * zoom.z;
    applyView();
  }

  stage.addEventListener('pointerdown', (e) => {
    if (!edit()) return;
    if (e.pointerType === 'touch') {
      touches.set(e.pointerId, [e.clientX, e.clientY]);
      if (touches.size > 1) {
        e.preventDefault();
        if (!pinch) {
          cancelStroke();
          startPinch();
        }
        return;
      }
    }
    if (state.stroke || pan) return;
    if (e.pointerType === 'mouse' && (e.button === 1 || (e.button === 0 && spaceHeld))) {
      startPan(e);
      return;
    }
    if (e.pointerType === 'mouse' && e.button !== 0) return;
    startStroke(e);
  });

  stage.addEventListener('pointermove', (e) => {
    if (touches.has(e.pointerId)) touches.set(e.pointerId, [e.clientX, e.clientY]);
    if (pinch) {
      if (touches.size > 1) movePinch();
      return;
    }
    if (pan && pan.id === e.pointerId) {
      movePan(e);
      return;
    }
    if (e.pointerType !== 'touch') moveCursor(e);
    if (state.stroke && state.strokePointer === e.pointerId) extendStroke(e);
  });

  function pointerEnd(e) {
    touches.delete(e.pointerId);
    if (pinch) {
      // The finger left down after a pinch does not start brushing; lifting it ends all.
      if (touches.size < 2) pinch = null;
      return;
    }
    if (pan && pan.id === e.pointerId) {
      pan = null;
      stage.classList.remove('panning');
    } else if (state.stroke && state.strokePointer === e.pointerId) {
      endStroke();
    }
  }
  stage.addEventListener('pointerup', pointerEnd);
  stage.addEventListener('pointercancel', pointerEnd);
  stage.addEventListener('pointerenter', (e) => {
    if (e.pointerType !== 'touch') pointer.over = true;
  });
  stage.addEventListener('pointerleave', () => {
    pointer.over = false;
    cursor.hidden = true;
  });
  // Middle-button drag pans; without this the browser would start its autoscroll.
  stage.addEventListener('mousedown', (e) => {
    if (e.button === 1) e.preventDefault();
  });
  window.addEventListener('blur', () => setSpace(false));

  // ---- drawing ----

  function strokeStyle(op) {
    ctx.globalCompositeOperation = op.mode === 'eraser' ? 'destination-out' : 'source-over';
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineWidth = op.width;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
  }

  // Draws points[from..] of a stroke; from > 0 continues it.
  function drawStroke(op, from) {
    strokeStyle(op);
    const pts = op.points;
    if (pts.length === 1) {
      ctx.beginPath();
      ctx.arc(pts[0][0], pts[0][1], op.width / 2, 0, Math.PI * 2);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    const start = Math.max(0, from - 1);
    ctx.moveTo(pts[start][0], pts[start][1]);
    for (let i = start + 1; i < pts.length; i++) ctx.lineTo(pts[i][0], pts[i][1]);
    ctx.stroke();
  }

  // Grow, shrink and invert are kept as parameters and recomputed on replay: a bitmap per
  // step would cost as much memory as the snapshots that strokes-as-vectors avoid.
  function apply(op) {
    if (op.type === 'stroke') drawStroke(op, 0);
    else if (op.type === 'clear') ctx.clearRect(0, 0, canvas.width, canvas.height);
    else if (op.type === 'image') {
      ctx.globalCompositeOperation = 'source-over';
      ctx.drawImage(op.canvas, 0, 0);
    } else if (op.type === 'grow') growMask(op.px);
    else if (op.type === 'invert') invertMask();
  }

  function redraw() {
    ctx.globalCompositeOperation = 'source-over';
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    edit().ops.forEach(apply);
  }

  function push(op) {
    const e = edit();
    e.ops.push(op);
    e.undone = [];
    dropLaterEdits();
    updateButtons();
  }

  function setTool(tool) {
    state.tool = tool;
    $('brush').setAttribute('aria-pressed', String(tool === 'brush'));
    $('eraser').setAttribute('aria-pressed', String(tool === 'eraser'));
  }
  $('brush').addEventListener('click', () => setTool('brush'));
  $('eraser').addEventListener('click', () => setTool('eraser'));

  function setSize(v) {
    state.size = clamp(Math.round(v), SIZE_MIN, SIZE_MAX);
    $('size').value = state.size;
    $('size-value').textContent = `${state.size} px`;
    sizeCursor();
  }
  $('size').addEventListener('input', (e) => setSize(+e.target.value));

  // ---- mask tools: grow, shrink, invert ----

  // Writes a hole (1) / keep (0) map of the rectangle (x, y, w, h) into RGBA pixels of the
  // canvas's full width, as opaque ink or nothing: the same binary mask that is sent.
  function paintHoles(data, W, holes, x, y, w, h) {
    for (let j = 0; j < h; j++) {
      for (let i = 0; i < w; i++) {
        const p = ((y + j) * W + x + i) * 4;
        const hole = holes[j * w + i];
        data[p] = INK_RGB[0];
        data[p + 1] = INK_RGB[1];
        data[p + 2] = INK_RGB[2];
        data[p + 3] = hole ? 255 : 0;
      }
    }
  }

  // Moves the mask's edge out by px image pixels (a dilation by a disk), or in for px < 0
  // (an erosion), by the same rule as the server's `mask_grow`: a pixel joins the hole when a
  // hole pixel is within px, and stays one only when no kept pixel is.
  function growMask(px) {
    const W = canvas.width;
    const H = canvas.height;
    const img = ctx.getImageData(0, 0, W, H);
    const a = img.data;
    let [x0, y0, x1, y1] = [W, H, -1, -1];
    for (let y = 0, p = 3; y < H; y++) {
      for (let x = 0; x < W; x++, p += 4) {
        if (!a[p]) continue;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
    }
    if (x1 < 0) return;
    // Nothing changes beyond the holes' box plus the radius, and every pixel that decides
    // anything inside it lies within it, so only that box is transformed.
    const r = Math.abs(px) + 1;
    [x0, y0, x1, y1] = [Math.max(0, x0 - r), Math.max(0, y0 - r), Math.min(W - 1, x1 + r), Math.min(H - 1, y1 + r)];
    const [w, h] = [x1 - x0 + 1, y1 - y0 + 1];
    const seeds = new Uint8Array(w * h);
    for (let j = 0; j < h; j++) {
      for (let i = 0; i < w; i++) {
        const hole = a[((y0 + j) * W + x0 + i) * 4 + 3] > 0;
        seeds[j * w + i] = hole === px > 0 ? 1 : 0;
      }
    }
    const d = squaredDistance(seeds, w, h);
    const r2 = px * px;
    const holes = new Uint8Array(w * h);
    for (let i = 0; i < holes.length; i++) holes[i] = px > 0 ? d[i] <= r2 : d[i] > r2;
    paintHoles(a, W, holes, x0, y0, w, h);
    ctx.putImageData(img, 0, 0, x0, y0, w, h);
  }

  function invertMask() {
    const { width: W, height: H } = canvas;
    const img = ctx.getImageData(0, 0, W, H);
    const holes = new Uint8Array(W * H);
    for (let i = 0; i < holes.length; i++) holes[i] = img.data[i * 4 + 3] === 0 ? 1 : 0;
    paintHoles(img.data, W, holes, 0, 0, W, H);
    ctx.putImageData(img, 0, 0);
  }

  // The squared Euclidean distance from each pixel of a w×h grid to the nearest seed
  // (Infinity with none): Felzenszwalb and Huttenlocher's separable transform, exact and
  // linear in the pixel count, as the server computes `mask_grow`.
  function squaredDistance(seeds, w, h) {
    const d = new Float64Array(w * h);
    for (let i = 0; i < d.length; i++) d[i] = seeds[i] ? 0 : Infinity;
    const n = Math.max(w, h);
    const f = new Float64Array(n);
    const out = new Float64Array(n);
    const roots = new Int32Array(n);
    const from = new Float64Array(n);
    for (let x = 0; x < w; x++) {
      for (let y = 0; y < h; y++) f[y] = d[y * w + x];
      lowerEnvelope(f, h, out, roots, from);
      for (let y = 0; y < h; y++) d[y * w + x] = out[y];
    }
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) f[x] = d[y * w + x];
      lowerEnvelope(f, w, out, roots, from);
      for (let x = 0; x < w; x++) d[y * w + x] = out[x];
    }
    return d;
  }

  // out[p] = min over q of (p − q)² + f[q], for p < n: the lower envelope of the parabolas
  // rooted at the finite f[q]. roots and from are scratch.
  function lowerEnvelope(f, n, out, roots, from) {
    let k = -1;
    for (let q = 0; q < n; q++) {
      if (f[q] === Infinity) continue;
      let start = -Infinity;
      while (k >= 0) {
        const top = roots[k];
        start = (f[q] + q * q - (f[top] + top * top)) / (2 * (q - top));
        if (start > from[k]) break;
        k--;
        start = -Infinity;
      }
      k++;
      roots[k] = q;
      from[k] = start;
    }
    if (k < 0) {
      out.fill(Infinity, 0, n);
      return;
    }
    for (let p = 0, j = 0; p < n; p++) {
      while (j < k && from[j + 1] < p) j++;
      out[p] = (p - roots[j]) ** 2 + f[roots[j]];
    }
  }

  function maskTool(op) {
    if (!edit() || state.stroke) return;
    push(op);
    apply(op);
  }
  $('grow').addEventListener('click', () => maskTool({ type: 'grow', px: MASK_TOOL_PX }));
  $('shrink').addEventListener('click', () => maskTool({ type: 'grow', px: -MASK_TOOL_PX }));
  $('invert').addEventListener('click', () => maskTool({ type: 'invert' }));

  // ---- undo and redo: strokes first, then whole edits ----

  function undo() {
    const e = edit();
    if (!e || state.busy) return;
    if (e.ops.length) {
      e.undone.push(e.ops.pop());
      redraw();
      updateButtons();
    } else if (state.at > 0) {
      state.at -= 1;
      showEdit();
      setStatus('Back to the previous edit.');
    }
  }

  function redo() {
    const e = edit();
    if (!e || state.busy) return;
    if (e.undone.length) {
      const op = e.undone.pop();
      e.ops.push(op);
      apply(op);
      updateButtons();
    } else if (state.at < state.chain.length - 1) {
      state.at += 1;
      showEdit();
      setStatus('Forward to the next edit.');
    }
  }

  $('undo').addEventListener('click', undo);
  $('redo').addEventListener('click', redo);
  $('clear').addEventListener('click', () => {
    if (!edit()) return;
    push({ type: 'clear' });
    redraw();
  });

  // ---- keyboard ----

  // Keys typed into a text field or menu are theirs; sliders, checkboxes and file pickers
  // leave the shortcuts working.
  const NOT_TEXT = ['range', 'checkbox', 'radio', 'file', 'button', 'submit', 'reset', 'color'];
  function typing(t) {
    return t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement ||
      (t instanceof HTMLInputElement && !NOT_TEXT.includes(t.type)) || !!t.isContentEditable;
  }

  document.addEventListener('keydown', (e) => {
    if (typing(e.target)) return;
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.toLowerCase();
    const loaded = !!edit();
    // Space pans only over the picture, so that it still presses a focused button elsewhere.
    if (e.key === ' ' && loaded && (pointer.over || spaceHeld)) {
      if (!e.repeat) setSpace(true);
    } else if (e.key === '[') setSize(state.size - Math.max(1, Math.round(state.size / 8)));
    else if (e.key === ']') setSize(state.size + Math.max(1, Math.round(state.size / 8)));
    else if (mod && key === 'z' && e.shiftKey) redo();
    else if (mod && key === 'z') undo();
    else if (mod && key === 'y') redo();
    else if (mod || e.altKey) return;
    else if (key === 'b') setTool('brush');
    else if (key === 'e') setTool('eraser');
    else if (loaded && (e.key === '+' || e.key === '=')) zoomAt(zoom.z * ZOOM_STEP, ...zoomCentre());
    else if (loaded && (e.key === '-' || e.key === '_')) zoomAt(zoom.z / ZOOM_STEP, ...zoomCentre());
    else if (loaded && e.key === '0') setFit();
    else if (loaded && e.key === '1') zoomAt(1, ...zoomCentre());
    else return;
    e.preventDefault();
  });

  document.addEventListener('keyup', (e) => {
    if (e.key === ' ' && spaceHeld) {
      setSpace(false);
      e.preventDefault();
    }
  });

  // ---- mask files ----

  // White = fill, black = keep: the server's mask convention, readable by any tool.
  function maskBlob() {
    const { width, height } = canvas;
    const src = ctx.getImageData(0, 0, width, height).data;
    const out = document.createElement('canvas');
    out.width = width;
    out.height = height;
    const octx = out.getContext('2d');
    const img = octx.createImageData(width, height);
    for (let i = 0; i < src.length; i += 4) {
      const v = src[i + 3] > 0 ? 255 : 0;
      img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
      img.data[i + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, 'image/png'));
  }

  $('export-mask').addEventListener('click', async () => {
    const blob = await maskBlob();
    let a = $('mask-download');
    if (!a) {
      a = document.createElement('a');
      a.id = 'mask-download';
      a.hidden = true;
      a.download = 'mask.png';
      document.body.append(a);
    } else {
      URL.revokeObjectURL(a.href);
    }
    a.href = URL.createObjectURL(blob);
    a.click();
  });

  // Same convention as the server: luma >= 128 is a hole, or alpha >= 1 for a brush layer.
  $('mask-file').addEventListener('change', (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (!file || !edit()) return;
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      URL.revokeObjectURL(url);
      const layer = document.createElement('canvas');
      layer.width = canvas.width;
      layer.height = canvas.height;
      const lctx = layer.getContext('2d');
      lctx.drawImage(img, 0, 0, layer.width, layer.height);
      const data = lctx.getImageData(0, 0, layer.width, layer.height);
      const d = data.data;
      let translucent = false;
      for (let i = 3; i < d.length; i += 4) if (d[i] !== 255) { translucent = true; break; }
      for (let i = 0; i < d.length; i += 4) {
        const luma = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
        const hole = translucent ? d[i + 3] >= 1 : luma >= 128;
        [d[i], d[i + 1], d[i + 2]] = INK_RGB;
        d[i + 3] = hole ? 255 : 0;
      }
      lctx.putImageData(data, 0, 0);
      const op = { type: 'image', canvas: layer };
      push(op);
      apply(op);
      setStatus('Mask imported.', 'ready');
    };
    img.onerror = () => setStatus('The browser cannot read that mask.', 'error');
    img.src = url;
  });

  // ---- results ----

  const extension = (type) => (/^image\/jpeg\b/i.test(type || '') ? 'jpg' : 'png');

  function hideResult() {
    state.shown = null;
    $('result').onload = null;
    $('result').dataset.eventId = '';
    $('result-stage').hidden = true;
    $('result-actions').hidden = true;
    $('result-empty').hidden = false;
    $('timing').textContent = '';
  }

  function showResult(shown) {
    state.shown = shown;
    const img = $('result');
    img.onload = () => {
      img.onload = null;
      $('result-empty').hidden = true;
      $('result-stage').hidden = false;
      $('result-actions').hidden = false;
      document.body.dataset.state = 'done';
    };
    img.dataset.eventId = shown.eventId || '';
    img.src = shown.src;
    const a = $('download');
    a.href = shown.href;
    a.download = shown.name;
    $('continue').hidden = !shown.fromChain;
  }

  function showChainResult() {
    const e = edit();
    const r = e && e.result;
    if (!r) {
      hideResult();
      return;
    }
    showResult({
      src: r.url,
      // The server's stored bytes when it keeps them, else the very bytes it answered: never
      // a re-encoding by the page.
      href: r.resultUrl || r.url,
      name: `inpainted.${extension(r.type)}`,
      eventId: r.eventId,
      compare: e.inputUrl,
      fromChain: true,
    });
    const ms = r.ms ? `model ${Math.round(+r.ms)} ms` : '';
    $('timing').textContent = [ms, r.ensemble].filter(Boolean).join(' · ');
  }

  async function errorText(blob, status) {
    try {
      const j = JSON.parse(await blob.text());
      return `${j.error} (${j.code})`;
    } catch (_) {
      return `The server answered ${status}.`;
    }
  }

  function resultOf(xhr) {
    const blob = xhr.response;
    const header = (name) => xhr.getResponseHeader(name);
    return {
      blob,
      url: URL.createObjectURL(blob),
      type: blob.type || header('Content-Type'),
      eventId: header('X-Event-Id'),
      resultUrl: header('X-Result-Url'),
      masterUrl: header('X-Master-Url'),
      ms: header('X-Inference-Ms'),
      ensemble: header('X-Ensemble'),
    };
  }

  function setResult(e, r) {
    if (!state.chain.includes(e)) {
      URL.revokeObjectURL(r.url); // a new photo replaced the chain while this one ran
      return;
    }
    if (e.result) URL.revokeObjectURL(e.result.url);
    e.result = r;
    // Strokes undone before Go are not in this result: redoing them would show a mask the
    // result was not made from.
    e.undone = [];
    dropLaterEdits();
    showChainResult();
    updateButtons();
  }

  $('go').addEventListener('click', async () => {
    const e = edit();
    if (!e || state.busy) return;
    const index = state.at;
    state.busy = true;
    updateButtons();
    setStatus('Uploading…', 'busy');
    const progress = $('progress');
    progress.hidden = false;
    progress.value = 0;
    const form = new FormData();
    form.append('image', e.input, index === 0 ? e.input.name || 'image' : 'master.png');
    form.append('mask', await maskBlob(), 'mask.png');
    if (userId) form.append('user_id', userId);
    if ($('model').value !== 'default') form.append('model', $('model').value);
    const parent = index > 0 ? state.chain[index - 1].result : null;
    // A server that cannot read its history cannot check a parent, and records none.
    if (parent && parent.eventId && historyReadable) form.append('parent_event_id', parent.eventId);
    appendSettings(form, index);
    const send = () => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/api/v1/inpaint');
      xhr.responseType = 'blob';
      xhr.upload.onprogress = (ev) => {
        if (ev.lengthComputable) progress.value = ev.loaded / ev.total;
      };
      xhr.upload.onload = () => {
        progress.removeAttribute('value'); // indeterminate while the model runs
        setStatus('Inpainting…', 'busy');
      };
      const done = () => {
        state.busy = false;
        progress.hidden = true;
        updateButtons();
      };
      xhr.onload = async () => {
        done();
        if (xhr.status === 200) {
          setResult(e, resultOf(xhr));
          setStatus('Done.');
          loadHistory();
          if (!$('settings').hidden) loadMetrics();
        } else {
          const retry = xhr.getResponseHeader('Retry-After');
          const why = await errorText(xhr.response, xhr.status);
          if (xhr.status === 404 && form.has('parent_event_id') && why.endsWith('(unknown_parent)')) {
            // The previous result's event is not in the history (it was deleted, or never
            // recorded): the edit goes on without the link rather than failing.
            form.delete('parent_event_id');
            state.busy = true;
            progress.hidden = false;
            updateButtons();
            send();
            return;
          }
          setStatus(retry ? `${why} Retry in ${retry} s.` : why, 'error');
        }
      };
      xhr.onerror = () => {
        done();
        setStatus('Network error: the server could not be reached.', 'error');
      };
      xhr.send(form);
    };
    send();
  });

  // ---- keep editing: the result becomes the next edit's input ----

  // The server's lossless copy: a JPEG result decoded and re-encoded at every step would lose
  // a little each time. The chain's downloads stay JPEG through `format` (appendSettings).
  async function masterOf(r) {
    if (!r.masterUrl || r.type === 'image/png') return r.blob;
    const res = await fetch(r.masterUrl);
    if (!res.ok) throw new Error(`the server answered ${res.status}`);
    return res.blob();
  }

  $('continue').addEventListener('click', async () => {
    const e = edit();
    const r = e && e.result;
    if (!r || state.busy || !state.shown || !state.shown.fromChain) return;
    state.busy = true;
    updateButtons();
    setStatus('Fetching the lossless result…', 'busy');
    let master;
    let size;
    try {
      master = await masterOf(r);
      const bitmap = await createImageBitmap(master);
      size = [bitmap.width, bitmap.height];
      bitmap.close();
    } catch (err) {
      setStatus(`Cannot continue from this result: ${err.message}.`, 'error');
      return;
    } finally {
      state.busy = false;
      updateButtons();
    }
    if (edit() !== e) return; // a new photo came meanwhile
    dropLaterEdits();
    state.chain.push(newEdit(master, URL.createObjectURL(master), ...size));
    state.at += 1;
    showEdit();
    setStatus('Editing the result: brush over what should go next.', 'ready');
  });

  // Hold to compare: the input shows in place of the result while pressed.
  const result = $('result');
  let comparing = false;
  result.addEventListener('pointerdown', (e) => {
    if (!state.shown || !state.shown.compare) return;
    e.preventDefault();
    result.setPointerCapture(e.pointerId);
    comparing = true;
    result.src = state.shown.compare;
  });
  const showFilled = () => {
    if (!comparing) return;
    comparing = false;
    if (state.shown) result.src = state.shown.src;
  };
  result.addEventListener('pointerup', showFilled);
  result.addEventListener('pointercancel', showFilled);
  result.addEventListener('contextmenu', (e) => e.preventDefault());

  // ---- measured latency per quality, from /metrics ----

  // Mean seconds per request and request count for each ensemble, summed over other labels.
  function ensembleStats(text) {
    const stats = {};
    const line = /^inference_ensemble_duration_seconds_(sum|count)\{([^}]*)\}\s+(\S+)/gm;
    for (const [, part, labels, value] of text.matchAll(line)) {
      const name = /(?:^|,)\s*ensemble="([^"]*)"/.exec(labels);
      if (!name) continue;
      const s = (stats[name[1]] ||= { sum: 0, count: 0 });
      s[part] += Number(value);
    }
    return stats;
  }

  // /metrics may be closed to the page (401 or 404): then the panel shows nothing.
  async function loadMetrics() {
    let text = '';
    try {
      const r = await fetch('/metrics');
      if (r.ok) text = await r.text();
    } catch (_) {
      text = '';
    }
    const stats = ensembleStats(text);
    const list = $('latency-list');
    list.replaceChildren();
    for (const name of ['flips', 'mirror', 'single']) {
      const s = stats[name];
      if (!s || !s.count) continue;
      const li = document.createElement('li');
      li.dataset.ensemble = name;
      li.textContent = `${name}: ${(s.sum / s.count).toFixed(2)} s (${s.count})`;
      list.append(li);
    }
    $('latency').hidden = !list.children.length;
  }

  // ---- history ----

  let historyReadable = true; // until the server says it keeps none

  async function loadHistory() {
    if (!historyReadable) return; // asking again after each result would only log a 501
    const note = $('history-note');
    let r;
    try {
      r = await fetch(`/api/v1/history?${userQuery()}limit=20`);
    } catch (_) {
      note.textContent = 'History is unavailable.';
      return;
    }
    if (r.status === 501) {
      historyReadable = false;
      note.textContent = 'This server keeps no history.';
      return;
    }
    if (!r.ok) {
      note.textContent = 'History is unavailable.';
      return;
    }
    const { events } = await r.json();
    const list = $('history-list');
    list.replaceChildren();
    note.textContent = events.length ? '' : 'Your results will be listed here.';
    for (const ev of events) {
      const li = document.createElement('li');
      li.dataset.eventId = ev.event_id;
      const b = document.createElement('button');
      b.type = 'button';
      if (ev.result_url) {
        const img = document.createElement('img');
        img.src = ev.result_url;
        img.alt = '';
        img.loading = 'lazy';
        b.append(img);
      }
      const when = new Date(ev.occurred_at);
      const label = document.createElement('span');
      label.textContent = `${when.toLocaleString()}` +
        (ev.kind === 'finetune' ? ` · training ${ev.strategy || ''}` : '') +
        (ev.width ? ` · ${ev.width}×${ev.height}` : '');
      b.append(label);
      b.disabled = !ev.result_url;
      b.addEventListener('click', () => {
        // Image keys end in their format (`<sha256>.jpg`), which names the download.
        const type = /\.jpe?g$/i.test(ev.result_url) ? 'image/jpeg' : 'image/png';
        showResult({
          src: ev.result_url,
          href: ev.result_url,
          name: `inpainted-${ev.event_id}.${extension(type)}`,
          eventId: ev.event_id,
          compare: ev.original_url || null,
          fromChain: false,
        });
        $('timing').textContent = '';
      });
      li.append(b);
      list.append(li);
    }
  }

  // ---- models and fine-tuning ----

  const training = { files: [], jobId: null, events: null };

  // Fills the model selector; hides it and the panel where the server cannot fine-tune.
  async function loadModels(select) {
    let r;
    try {
      r = await fetch('/api/v1/models');
    } catch (_) {
      return;
    }
    if (!r.ok) return;
    const { models } = await r.json();
    const menu = $('model');
    const keep = select || menu.value;
    menu.replaceChildren();
    for (const m of models) {
      const o = document.createElement('option');
      o.value = m.id;
      if (m.kind === 'default') {
        o.textContent = 'Default';
      } else {
        const psnr = m.validation && m.validation.finetuned;
        o.textContent = (m.name || `trained ${m.id.slice(-6)}`) +
          (psnr ? ` (${psnr.mean_psnr.toFixed(1)} dB)` : '');
      }
      menu.append(o);
    }
    menu.value = models.some((m) => m.id === keep) ? keep : 'default';
    menu.closest('label').hidden = models.length < 2;
    $('train').hidden = false;
  }

  function trainState(kind, text) {
    $('train').dataset.state = kind;
    $('train-status').textContent = text || '';
    const busy = kind === 'queued' || kind === 'running';
    $('train-go').disabled = busy || training.files.length === 0;
    $('train-cancel').hidden = !busy;
    $('train-progress').hidden = !busy && kind !== 'done';
    $('train-use').hidden = kind !== 'done';
  }

  function describe(s) {
    const parts = [`step ${s.step} of ${s.total_steps}`];
    if (s.loss != null) parts.push(`loss ${s.loss.toFixed(4)}`);
    if (s.val_psnr != null) parts.push(`held-out PSNR ${s.val_psnr.toFixed(2)} dB`);
    if (s.eta_s != null && s.state === 'running') parts.push(`about ${Math.ceil(s.eta_s)} s left`);
    if (s.images && s.images.skipped) parts.push(`${s.images.skipped} unreadable file(s) skipped`);
    return parts.join(' · ');
  }

  function showJob(s) {
    const bar = $('train-progress');
    bar.value = s.total_steps ? s.step / s.total_steps : 0;
    if (s.state === 'queued') {
      trainState('queued', 'Waiting for the previous training job…');
    } else if (s.state === 'running') {
      trainState('running', describe(s));
    } else if (s.state === 'done') {
      const v = s.validation || {};
      const gain = v.base && v.finetuned
        ? ` Held-out photos: ${v.base.mean_psnr.toFixed(2)} → ${v.finetuned.mean_psnr.toFixed(2)} dB PSNR.`
        : '';
      trainState('done', `Done: ${describe(s)}.${gain}`);
      loadModels();
    } else if (s.state === 'failed') {
      trainState('failed', `Training failed: ${s.error || 'unknown error'}`);
    } else {
      trainState('cancelled', `Cancelled at step ${s.checkpoint_step ?? s.step}.`);
    }
  }

  function follow(jobId) {
    training.jobId = jobId;
    if (training.events) training.events.close();
    const events = new EventSource(`/api/v1/finetune/${jobId}/events`);
    training.events = events;
    events.addEventListener('status', (e) => {
      const s = JSON.parse(e.data);
      showJob(s);
      // The server ends the stream after the last state; do not let EventSource reconnect.
      if (!['queued', 'running'].includes(s.state)) events.close();
    });
  }

  $('train-files').addEventListener('change', (e) => {
    training.files = [...e.target.files];
    const n = training.files.length;
    $('train-picked').textContent = n ? `${n} file(s) picked.` : 'No photos picked.';
    trainState($('train').dataset.state === 'running' ? 'running' : 'idle');
  });

  $('train-go').addEventListener('click', async () => {
    const form = new FormData();
    for (const f of training.files) form.append('images', f, f.name);
    if (userId) form.append('user_id', userId);
    if ($('train-name').value.trim()) form.append('name', $('train-name').value.trim());
    if ($('train-steps').value) form.append('steps', $('train-steps').value);
    trainState('queued', 'Uploading…');
    let r;
    try {
      r = await fetch('/api/v1/finetune', { method: 'POST', body: form });
    } catch (_) {
      trainState('failed', 'Network error: the server could not be reached.');
      return;
    }
    if (r.status !== 202) {
      trainState('failed', await errorText(await r.blob(), r.status));
      return;
    }
    follow((await r.json()).job_id);
  });

  $('train-cancel').addEventListener('click', () => {
    if (training.jobId) fetch(`/api/v1/finetune/${training.jobId}`, { method: 'DELETE' });
  });

  $('train-use').addEventListener('click', () => {
    $('model').value = training.jobId;
    $('model').closest('label').hidden = false;
    setStatus('The new model fills the holes from now on.');
  });

  // A job started before a reload is followed again.
  async function resumeTraining() {
    let r;
    try {
      r = await fetch(`/api/v1/finetune?${userQuery()}`);
    } catch (_) {
      return;
    }
    if (!r.ok) return;
    const { jobs } = await r.json();
    const live = jobs.filter((j) => j.state === 'queued' || j.state === 'running').pop();
    if (live) follow(live.job_id);
  }

  // ---- sign-in (`--auth tokens`): a token is exchanged once for a session cookie ----

  async function session() {
    try {
      const r = await fetch('/api/v1/session');
      return r.ok ? await r.json() : { auth: 'none', user: null };
    } catch (_) {
      return { auth: 'none', user: null };
    }
  }

  $('sign-in').addEventListener('submit', async (e) => {
    e.preventDefault();
    const status = $('sign-in-status');
    status.textContent = 'Signing in…';
    let r;
    try {
      r = await fetch('/api/v1/session', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ token: $('sign-in-token').value.trim() }),
      });
    } catch (_) {
      status.textContent = 'Network error: the server could not be reached.';
      return;
    }
    if (!r.ok) {
      status.textContent = await errorText(await r.blob(), r.status);
      return;
    }
    $('sign-in-token').value = '';
    status.textContent = '';
    start();
  });

  $('sign-out').addEventListener('click', async () => {
    await fetch('/api/v1/session', { method: 'DELETE' }).catch(() => {});
    window.location.reload();
  });

  async function start() {
    const { auth, user } = await session();
    const signedOut = auth !== 'none' && !user;
    document.body.classList.toggle('signed-out', signedOut);
    $('sign-in').hidden = !signedOut;
    $('who').hidden = !user;
    if (signedOut) return;
    if (user) {
      userId = null;
      $('who-name').textContent = user;
    }
    loadHistory();
    loadModels().then(resumeTraining);
  }

  showSettings(storedSettings());
  setSize(state.size);
  updateButtons();
  start();
})();
