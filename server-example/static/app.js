// The page's whole behaviour, without a framework or build step, so the binary can embed it.
//
// The mask canvas has the image's full resolution and is only scaled by CSS, so what is sent
// is the original file plus a mask of exactly its size. Strokes are kept as vectors and
// replayed on undo, because bitmap snapshots of a 12-megapixel canvas would cost 48 MB each.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $('mask');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const INK = 'rgb(255, 0, 72)';

  const state = {
    file: null,        // the uploaded Blob, sent as it is
    originalUrl: null,
    ops: [],           // strokes, imported masks and clears, replayed in order
    undone: [],
    tool: 'brush',
    size: 40,          // brush diameter in screen pixels
    stroke: null,      // the stroke being drawn
    resultUrl: null,
    busy: false,
  };

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
    const loaded = !!state.file;
    $('undo').disabled = !state.ops.length;
    $('redo').disabled = !state.undone.length;
    $('clear').disabled = !loaded || !state.ops.length;
    $('export-mask').disabled = !loaded;
    $('go').disabled = !loaded || state.busy;
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
      if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
      state.file = blob;
      state.originalUrl = url;
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      state.ops = [];
      state.undone = [];
      redraw();
      $('drop').hidden = true;
      $('stage').hidden = false;
      clearResult();
      setStatus(`${img.naturalWidth}×${img.naturalHeight} — brush over what should go.`, 'ready');
      updateButtons();
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      setStatus('The browser cannot read that image.', 'error');
    };
    img.src = url;
  }

  $('file').addEventListener('change', (e) => {
    loadImage(e.target.files[0]);
    e.target.value = '';
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

  // ---- drawing ----

  function imageScale() {
    const r = canvas.getBoundingClientRect();
    return r.width ? canvas.width / r.width : 1;
  }

  function toImage(e) {
    const r = canvas.getBoundingClientRect();
    const s = canvas.width / r.width;
    return [(e.clientX - r.left) * s, (e.clientY - r.top) * s];
  }

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

  function apply(op) {
    if (op.type === 'stroke') drawStroke(op, 0);
    else if (op.type === 'clear') ctx.clearRect(0, 0, canvas.width, canvas.height);
    else if (op.type === 'image') {
      ctx.globalCompositeOperation = 'source-over';
      ctx.drawImage(op.canvas, 0, 0);
    }
  }

  function redraw() {
    ctx.globalCompositeOperation = 'source-over';
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    state.ops.forEach(apply);
  }

  function push(op) {
    state.ops.push(op);
    state.undone = [];
    updateButtons();
  }

  const cursor = $('cursor');
  function moveCursor(e) {
    const r = canvas.getBoundingClientRect();
    cursor.hidden = false;
    cursor.style.left = `${e.clientX - r.left}px`;
    cursor.style.top = `${e.clientY - r.top}px`;
    cursor.style.width = cursor.style.height = `${state.size}px`;
  }

  canvas.addEventListener('pointerdown', (e) => {
    if (!state.file || (e.pointerType === 'mouse' && e.button !== 0)) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    // A pen's eraser end erases whatever tool is selected.
    const mode = e.button === 5 ? 'eraser' : state.tool;
    state.stroke = { type: 'stroke', mode, width: state.size * imageScale(), points: [toImage(e)] };
    drawStroke(state.stroke, 0);
  });
  canvas.addEventListener('pointermove', (e) => {
    moveCursor(e);
    if (!state.stroke) return;
    const from = state.stroke.points.length;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) state.stroke.points.push(toImage(ev));
    drawStroke(state.stroke, from);
  });
  const endStroke = () => {
    if (state.stroke) push(state.stroke);
    state.stroke = null;
  };
  canvas.addEventListener('pointerup', endStroke);
  canvas.addEventListener('pointercancel', endStroke);
  canvas.addEventListener('pointerleave', () => { cursor.hidden = true; });

  function setTool(tool) {
    state.tool = tool;
    $('brush').setAttribute('aria-pressed', String(tool === 'brush'));
    $('eraser').setAttribute('aria-pressed', String(tool === 'eraser'));
  }
  $('brush').addEventListener('click', () => setTool('brush'));
  $('eraser').addEventListener('click', () => setTool('eraser'));

  function setSize(v) {
    state.size = Math.max(2, Math.min(200, Math.round(v)));
    $('size').value = state.size;
    $('size-value').textContent = state.size;
    cursor.style.width = cursor.style.height = `${state.size}px`;
  }
  $('size').addEventListener('input', (e) => setSize(+e.target.value));

  function undo() {
    if (!state.ops.length) return;
    state.undone.push(state.ops.pop());
    redraw();
    updateButtons();
  }
  function redo() {
    if (!state.undone.length) return;
    const op = state.undone.pop();
    state.ops.push(op);
    apply(op);
    updateButtons();
  }
  $('undo').addEventListener('click', undo);
  $('redo').addEventListener('click', redo);
  $('clear').addEventListener('click', () => {
    push({ type: 'clear' });
    redraw();
  });

  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement && e.target.type !== 'range') return;
    const mod = e.ctrlKey || e.metaKey;
    if (e.key === '[') setSize(state.size - Math.max(1, Math.round(state.size / 8)));
    else if (e.key === ']') setSize(state.size + Math.max(1, Math.round(state.size / 8)));
    else if (mod && e.key.toLowerCase() === 'z' && e.shiftKey) redo();
    else if (mod && e.key.toLowerCase() === 'z') undo();
    else if (mod && e.key.toLowerCase() === 'y') redo();
    else if (!mod && e.key === 'b') setTool('brush');
    else if (!mod && e.key === 'e') setTool('eraser');
    else return;
    e.preventDefault();
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
    if (!file || !state.file) return;
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
        d[i] = 255; d[i + 1] = 0; d[i + 2] = 72; d[i + 3] = hole ? 255 : 0;
      }
      lctx.putImageData(data, 0, 0);
      push({ type: 'image', canvas: layer });
      apply(state.ops[state.ops.length - 1]);
      setStatus('Mask imported.', 'ready');
    };
    img.onerror = () => setStatus('The browser cannot read that mask.', 'error');
    img.src = url;
  });

  // ---- Go ----

  function clearResult() {
    if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
    state.resultUrl = null;
    $('result-stage').hidden = true;
    $('result-actions').hidden = true;
    $('result-empty').hidden = false;
  }

  function showResult(url, eventId) {
    const img = $('result');
    img.onload = () => {
      $('result-empty').hidden = true;
      $('result-stage').hidden = false;
      $('result-actions').hidden = false;
      document.body.dataset.state = 'done';
    };
    img.dataset.eventId = eventId || '';
    img.src = url;
    $('download').href = url;
  }

  async function errorText(blob, status) {
    try {
      const j = JSON.parse(await blob.text());
      return `${j.error} (${j.code})`;
    } catch (_) {
      return `The server answered ${status}.`;
    }
  }

  $('go').addEventListener('click', async () => {
    if (!state.file || state.busy) return;
    state.busy = true;
    updateButtons();
    setStatus('Uploading…', 'busy');
    const progress = $('progress');
    progress.hidden = false;
    progress.value = 0;
    const form = new FormData();
    form.append('image', state.file, state.file.name || 'image');
    form.append('mask', await maskBlob(), 'mask.png');
    if (userId) form.append('user_id', userId);
    if ($('model').value !== 'default') form.append('model', $('model').value);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/api/v1/inpaint');
    xhr.responseType = 'blob';
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) progress.value = e.loaded / e.total;
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
        if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
        state.resultUrl = URL.createObjectURL(xhr.response);
        const ms = xhr.getResponseHeader('X-Inference-Ms');
        $('timing').textContent = ms ? `model ${Math.round(+ms)} ms` : '';
        $('download').download = 'inpainted.png';
        showResult(state.resultUrl, xhr.getResponseHeader('X-Event-Id'));
        setStatus('Done.');
        loadHistory();
      } else {
        const retry = xhr.getResponseHeader('Retry-After');
        const why = await errorText(xhr.response, xhr.status);
        setStatus(retry ? `${why} Retry in ${retry} s.` : why, 'error');
      }
    };
    xhr.onerror = () => {
      done();
      setStatus('Network error: the server could not be reached.', 'error');
    };
    xhr.send(form);
  });

  // Hold to compare: the original shows in place of the result while pressed.
  const result = $('result');
  const showOriginal = (e) => {
    if (!state.originalUrl || !state.resultUrl) return;
    e.preventDefault();
    result.setPointerCapture(e.pointerId);
    result.src = state.originalUrl;
  };
  const showFilled = () => {
    if (state.resultUrl && result.src !== state.resultUrl) result.src = state.resultUrl;
  };
  result.addEventListener('pointerdown', showOriginal);
  result.addEventListener('pointerup', showFilled);
  result.addEventListener('pointercancel', showFilled);
  result.addEventListener('contextmenu', (e) => e.preventDefault());

  // ---- history ----

  async function loadHistory() {
    const note = $('history-note');
    let r;
    try {
      r = await fetch(`/api/v1/history?${userQuery()}limit=20`);
    } catch (_) {
      note.textContent = 'History is unavailable.';
      return;
    }
    if (r.status === 501) {
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
        if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
        state.resultUrl = null;
        $('download').download = `inpainted-${ev.event_id}.png`;
        showResult(ev.result_url, ev.event_id);
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

  setSize(state.size);
  updateButtons();
  start();
})();
