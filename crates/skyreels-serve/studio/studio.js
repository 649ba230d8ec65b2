// skyreels studio: a page over the /v1 API of `skyreels serve`.
//
// Rules this file keeps: text from users or the server only ever reaches the page through
// textContent, attributes or form values (never as HTML); every change is sent with the
// X-Skyreels-Studio header (the session cookie alone authorises nothing that changes state);
// one event stream (/v1/events) keeps every card current, and it reconnects by itself when the
// server restarts.
'use strict';

const $ = (id) => document.getElementById(id);
const ACTIVE = ['queued', 'running', 'interrupted'];
/** Request fields whose errors are shown beside another control. */
const FIELD_HOME = {
  ar_step: 'schedule', causal_block_size: 'schedule', extend_job: 'extend', prompt: 'prompt', loras: 'lora',
};
const NUMBER_FIELDS = ['width', 'height', 'steps', 'guidance', 'fps', 'shift', 'base_frames', 'overlap_history'];

const state = {
  config: null,
  defaults: null,
  jobs: new Map(),
  cards: new Map(),
  events: null,
  retry: null,
  extendJob: null,
  /** Counts sign-ins and sign-outs: work started under an older one is dropped. */
  generation: 0,
};

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

/** Calls the API; JSON in and out, a Blob sent as raw bytes. Errors become ApiError. */
async function api(method, path, body) {
  const headers = { 'X-Skyreels-Studio': '1' };
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers['Content-Type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
  } catch (e) {
    throw new ApiError(0, 'The server cannot be reached.', null);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || response.statusText, data && data.field);
  }
  return data;
}

// ---------------------------------------------------------------- signing in

async function start() {
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  $('job-form').addEventListener('submit', submitJob);
  document.querySelectorAll('input[name=mode]').forEach((r) => r.addEventListener('change', showMode));
  $('add-shot').addEventListener('click', () => addShot('', 1, true));
  $('model').addEventListener('change', () => applyDefaults($('model').value));
  for (const id of ['seconds', 'frames', 'fps', 'base_frames', 'overlap_history']) {
    $(id).addEventListener('input', () => syncLength(id));
  }
  $('endless').addEventListener('change', () => syncLength());
  $('extend-source-clear').addEventListener('click', () => setExtendJob(null));
  try {
    await enter(await api('GET', '/v1/session'));
  } catch (e) {
    showSignIn(e.status === 401 ? '' : e.message);
  }
}

function showSignIn(message) {
  $('studio').hidden = true;
  $('who').hidden = true;
  $('signin').hidden = false;
  setError('token', message || '');
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  setError('token', '');
  const button = $('sign-in');
  button.disabled = true;
  try {
    const session = await api('POST', '/v1/session', { token: $('token').value });
    $('token').value = '';
    await enter(session);
  } catch (e) {
    setError('token', e.message);
    $('token').focus();
  } finally {
    button.disabled = false;
  }
}

async function enter(session) {
  const generation = ++state.generation;
  $('who-name').textContent = session.admin ? `${session.name} (admin)` : session.name;
  state.config = await api('GET', '/v1/config');
  const models = $('model');
  models.replaceChildren();
  for (const m of state.config.models) {
    models.append(new Option(m.name, m.name));
  }
  applyDefaults(state.config.models[0].name);
  // The adapters this server offers (none: the fields stay hidden).
  const loras = state.config.loras || [];
  $('lora').replaceChildren(new Option('None', ''), ...loras.map((name) => new Option(name, name)));
  $('lora-field').hidden = loras.length === 0;
  $('lora-strength-field').hidden = loras.length === 0;
  const limits = state.config.limits;
  $('endless-field').hidden = !limits.endless;
  $('frames').max = limits.max_frames;
  $('width').max = limits.max_side;
  $('height').max = limits.max_side;
  $('steps').max = limits.max_steps;
  if (!$('shots').children.length) addShot('', 1, false);
  showMode();
  $('signin').hidden = true;
  $('who').hidden = false;
  $('studio').hidden = false;
  await reloadJobs();
  if (generation !== state.generation) return;
  connect();
  $('prompt').focus();
}

async function signOut() {
  state.generation += 1;
  disconnect();
  try { await api('DELETE', '/v1/session'); } catch (e) { /* signed out locally anyway */ }
  state.jobs.clear();
  state.cards.forEach((card) => card.remove());
  state.cards.clear();
  updateEmpty();
  showSignIn('');
}

// ---------------------------------------------------------------- the form

/** The start modes each kind of model can do (one-shot models: one mode each). */
const MODES_OF = {
  diffusion_forcing: ['text', 'image', 'end_image', 'extend', 'story'],
  text_to_video: ['text'],
  image_to_video: ['image'],
  reference_to_video: ['references'],
  elements_to_video: ['references'],
  // A cut to a new shot: start the prompt with its tag, e.g. [ZOOM_IN_CUT].
  video_extension: ['extend'],
};

function applyDefaults(modelName) {
  const model = state.config.models.find((m) => m.name === modelName) || state.config.models[0];
  state.defaults = model.defaults;
  // Modes the model cannot do are disabled (and left if chosen).
  const modes = MODES_OF[model.pipeline] || MODES_OF.diffusion_forcing;
  document.querySelectorAll('input[name=mode]').forEach((radio) => {
    radio.disabled = !modes.includes(radio.value);
  });
  if (!modes.includes(currentMode())) {
    document.querySelector(`#mode-${modes[0]}`).checked = true;
    showMode();
  }
  $('endless').disabled = model.pipeline !== 'diffusion_forcing';
  $('schedule').disabled = model.pipeline !== 'diffusion_forcing';
  for (const id of NUMBER_FIELDS) $(id).value = model.defaults[id];
  $('negative_prompt').value = model.defaults.negative_prompt;
  // An adapter is made for one model: switching models drops the choice.
  $('lora').value = '';
  $('frames').value = model.defaults.frames;
  syncLength('frames');
}

function currentMode() {
  return document.querySelector('input[name=mode]:checked').value;
}

function showMode() {
  const mode = currentMode();
  document.querySelectorAll('[data-modes]').forEach((el) => {
    el.hidden = !el.dataset.modes.split(' ').includes(mode);
  });
  // A story lasts as many windows as its shots ask for.
  const lengthHidden = mode === 'story';
  for (const id of ['seconds', 'frames']) $(id).closest('.field').hidden = lengthHidden;
  $('frames-hint').hidden = lengthHidden;
  $('endless-field').hidden = lengthHidden || !state.config.limits.endless;
  if (mode !== 'extend') setExtendJob(null);
  syncLength();
}

function setExtendJob(job) {
  state.extendJob = job;
  $('extend-source').hidden = !job;
  $('extend').hidden = Boolean(job);
  $('extend-source-text').textContent = job ? `Extending: ${titleOf(job)}` : '';
}

function addShot(prompt, windows, focus) {
  const item = $('shot-template').content.firstElementChild.cloneNode(true);
  item.querySelector('.shot-prompt').value = prompt;
  item.querySelector('.shot-windows').value = windows;
  item.querySelector('.shot-remove').addEventListener('click', () => {
    if ($('shots').children.length < 2) return;
    const neighbour = item.previousElementSibling || item.nextElementSibling;
    item.remove();
    numberShots();
    neighbour.querySelector('.shot-prompt').focus();
  });
  $('shots').append(item);
  numberShots();
  if (focus) item.querySelector('.shot-prompt').focus();
}

/** Names each shot's controls by its place in the list (screen readers hear "Shot 2 prompt"). */
function numberShots() {
  [...$('shots').children].forEach((item, i) => {
    item.querySelector('.shot-prompt').setAttribute('aria-label', `Shot ${i + 1} prompt`);
    item.querySelector('.shot-windows').setAttribute('aria-label', `Shot ${i + 1} windows`);
    item.querySelector('.shot-remove').setAttribute('aria-label', `Remove shot ${i + 1}`);
  });
}

const latent = (frames) => Math.floor((frames - 1) / 4) + 1;

/** Keeps seconds and frames in step (frames are 4k+1) and explains the window plan. */
function syncLength(changed) {
  const fps = Number($('fps').value) || state.defaults.fps;
  const endless = $('endless').checked && !$('endless').disabled && !$('endless-field').hidden;
  $('seconds').disabled = endless;
  $('frames').disabled = endless;
  if (changed === 'seconds') {
    const n = Math.max(1, Math.round(Number($('seconds').value) * fps));
    $('frames').value = Math.ceil((n - 1) / 4) * 4 + 1;
  }
  const frames = Number($('frames').value);
  // Anything but the seconds changed: the frame count stays, the seconds follow it.
  if (changed !== 'seconds' && frames > 0) $('seconds').value = (frames / fps).toFixed(2);
  const base = Number($('base_frames').value);
  const overlap = Number($('overlap_history').value);
  let text;
  if (endless) {
    text = `Runs until you stop it, window after window of ${base} frames.`;
  } else if (frames > 0 && currentMode() === 'extend') {
    text = `${frames} frames at ${fps} fps, counting the ${overlap} taken from the clip: ` +
      `${Math.max(0, frames - overlap)} new frames.`;
  } else if (frames > 0 && base > overlap && overlap > 0) {
    const [l, lb, lo] = [latent(frames), latent(base), latent(overlap)];
    const windows = l <= lb ? 1 : 1 + Math.ceil((l - lb) / (lb - lo));
    text = `${frames} frames at ${fps} fps: ${windows} window${windows === 1 ? '' : 's'} of ${base} frames` +
      (windows > 1 ? `, overlapping by ${overlap}.` : '.');
  } else {
    text = '';
  }
  $('frames-hint').textContent = text;
}

function numberOrUndefined(id) {
  if ($(id).validity.badInput) throw new ApiError(400, 'This is not a number.', id);
  const raw = $(id).value.trim();
  return raw === '' ? undefined : Number(raw);
}

/** The job request the form describes (uploads not yet made). */
function collect() {
  const mode = currentMode();
  const request = { model: $('model').value, format: $('format').value };
  for (const id of NUMBER_FIELDS) request[id] = numberOrUndefined(id);
  request.seed = numberOrUndefined('seed');
  request.negative_prompt = $('negative_prompt').value;
  if ($('lora').value) request.loras = [`${$('lora').value}:${$('lora_strength').value || 1}`];
  if ($('cache').value !== 'off') request.cache = $('cache').value;
  if ($('schedule').value === 'async' && !$('schedule').disabled) {
    request.ar_step = 5;
    // A window that starts from a clean image frame cannot be split into blocks of 5.
    request.causal_block_size = mode === 'image' || mode === 'end_image' ? 1 : 5;
  }
  if (mode === 'story') {
    request.story = [...$('shots').children].map((li) => ({
      prompt: li.querySelector('.shot-prompt').value,
      windows: Number(li.querySelector('.shot-windows').value) || 1,
    }));
  } else {
    request.prompt = $('prompt').value;
    const endless = $('endless').checked && !$('endless').disabled && !$('endless-field').hidden;
    request.frames = endless ? 0 : numberOrUndefined('frames');
  }
  return request;
}

/** Uploads the 1–4 files of the references field. */
async function uploadReferences(uploaded) {
  const files = [...$('references').files];
  if (files.length === 0) throw new ApiError(400, 'Choose 1 to 4 reference images.', 'references');
  if (files.length > 4) throw new ApiError(400, `${files.length} images chosen: at most 4 references.`, 'references');
  const ids = [];
  for (const file of files) {
    try {
      ids.push((await api('POST', '/v1/uploads', file)).id);
      uploaded.push(ids[ids.length - 1]);
    } catch (e) {
      throw new ApiError(e.status, e.message, 'references');
    }
  }
  return ids;
}

async function uploadFile(field, message, uploaded) {
  const file = $(field).files[0];
  if (!file) throw new ApiError(400, message, field);
  try {
    const id = (await api('POST', '/v1/uploads', file)).id;
    uploaded.push(id);
    return id;
  } catch (e) {
    throw new ApiError(e.status, e.message, field);
  }
}

async function submitJob(event) {
  event.preventDefault();
  clearErrors();
  const mode = currentMode();
  const button = $('generate');
  button.disabled = true;
  const uploaded = [];
  try {
    const request = collect();
    if (mode === 'image' || mode === 'end_image') {
      request.image = await uploadFile('image', 'Choose the first frame.', uploaded);
    }
    if (mode === 'references') request.references = await uploadReferences(uploaded);
    if (mode === 'end_image') {
      request.end_image = await uploadFile('end_image', 'Choose the last frame.', uploaded);
    }
    if (mode === 'extend') {
      if (state.extendJob) request.extend_job = state.extendJob.id;
      else request.extend = await uploadFile('extend', 'Choose the clip to extend.', uploaded);
    }
    let job;
    try {
      job = await api('POST', '/v1/jobs', request);
    } catch (e) {
      // The job was refused: its uploads would never be used.
      for (const id of uploaded) api('DELETE', `/v1/uploads/${id}`).catch(() => {});
      throw e;
    }
    upsert(job);
    if (mode === 'extend') {
      setExtendJob(null);
      document.querySelector('#mode-text').checked = true;
      showMode();
    }
  } catch (e) {
    showApiError(e);
  } finally {
    button.disabled = false;
  }
}

function errorHome(field) {
  if (!field) return null;
  let home = FIELD_HOME[field] || field;
  if (home === 'frames' && currentMode() === 'story') home = 'story';
  const box = $(`${home}-error`);
  return box && !box.closest('[hidden]') ? home : null;
}

function setError(field, message) {
  const box = $(`${field}-error`);
  if (box) box.textContent = message;
  const input = $(field);
  if (input && input.matches('input, textarea, select')) {
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  }
}

function clearErrors() {
  document.querySelectorAll('#job-form .field-error').forEach((box) => { box.textContent = ''; });
  document.querySelectorAll('#job-form [aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
}

/** Shows a refusal beside the field it concerns (opening the advanced settings if need be). */
function showApiError(e) {
  if (e.status === 401) {
    showSignIn('Your session ended: sign in again.');
    return;
  }
  const home = errorHome(e.field);
  if (!home) {
    $('form-error').textContent = e.message;
    return;
  }
  const details = $(`${home}-error`).closest('details');
  if (details) details.open = true;
  setError(home, e.message);
  const input = $(home) || $('shots').querySelector('textarea');
  if (input && !input.closest('[hidden]')) input.focus();
}

// ---------------------------------------------------------------- jobs

function connect() {
  disconnect();
  const events = new EventSource('/v1/events');
  state.events = events;
  events.addEventListener('job', (e) => upsert(JSON.parse(e.data)));
  events.addEventListener('deleted', (e) => removeJob(JSON.parse(e.data).id));
  events.addEventListener('open', () => { $('connection').textContent = ''; });
  events.addEventListener('error', () => {
    // Reconnect ourselves (EventSource gives up on some failures), after checking the session.
    events.close();
    if (state.events !== events) return;
    $('connection').textContent = 'Reconnecting…';
    state.retry = setTimeout(reconnect, 1000);
  });
}

function disconnect() {
  if (state.events) state.events.close();
  state.events = null;
  clearTimeout(state.retry);
}

async function reconnect() {
  const generation = state.generation;
  try {
    await api('GET', '/v1/session');
    await reloadJobs();
    if (generation === state.generation) connect();
  } catch (e) {
    if (generation !== state.generation) return;
    if (e.status === 401) {
      disconnect();
      showSignIn('Your session ended: sign in again.');
    } else {
      state.retry = setTimeout(reconnect, 1000);
    }
  }
}

/** Replaces the cards with the server's list (after a reconnect, deletions may have been missed). */
async function reloadJobs() {
  const list = await api('GET', '/v1/jobs?limit=500');
  const ids = new Set(list.jobs.map((j) => j.id));
  for (const id of [...state.jobs.keys()]) if (!ids.has(id)) removeJob(id);
  for (const job of list.jobs.slice().reverse()) upsert(job);
}

function removeJob(id) {
  state.jobs.delete(id);
  const card = state.cards.get(id);
  if (card) {
    // Keep keyboard users in place: focus moves to the next card, or the list's heading.
    const hadFocus = card.contains(document.activeElement);
    const next = card.nextElementSibling || card.previousElementSibling;
    const heading = card.closest('section').querySelector('h2');
    card.remove();
    if (hadFocus) focusIn(next, heading);
  }
  state.cards.delete(id);
  if (state.extendJob && state.extendJob.id === id) setExtendJob(null);
  updateEmpty();
}

/** Focuses the first button of `card`, or `fallback` (made focusable) when there is no card. */
function focusIn(card, fallback) {
  const target = card && card.querySelector('button, a');
  if (target) {
    target.focus();
  } else {
    fallback.tabIndex = -1;
    fallback.focus();
  }
}

/** Says something to screen-reader users without moving their focus. */
function announce(text) {
  $('announcer').textContent = text;
}

function updateEmpty() {
  $('queue-empty').hidden = $('queue').children.length > 0;
  $('gallery-empty').hidden = $('gallery').children.length > 0;
}

function titleOf(job) {
  const s = job.settings;
  if (s.story && s.story.length) {
    const more = s.story.length > 1 ? ` (+${s.story.length - 1} more shot${s.story.length > 2 ? 's' : ''})` : '';
    return s.story[0].prompt + more;
  }
  return s.prompt || '(no prompt)';
}

const KIND = {
  text: 'text',
  image: 'first frame',
  end_image: 'start + end frame',
  extend: 'extension',
  story: 'story',
  references: 'references',
};

function framesOf(job) {
  if (job.frames != null) return job.frames;
  return (job.progress && job.progress.frames) || 0;
}

function seconds(value) {
  if (value == null || !isFinite(value)) return '';
  if (value < 90) return `${Math.round(value)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

function metaOf(job) {
  const s = job.settings;
  const fps = s.fps || (state.defaults && state.defaults.fps) || 24;
  const parts = [KIND[job.kind] || job.kind];
  if (s.width && s.height) parts.push(`${s.width}×${s.height}`);
  const frames = framesOf(job);
  if (job.state === 'done' || frames > 0) {
    parts.push(`${frames} frames (${(frames / fps).toFixed(1)} s)`);
  } else if (s.frames === 0) {
    parts.push('endless');
  } else if (s.frames) {
    parts.push(`${s.frames} frames`);
  }
  if (s.seed != null) parts.push(`seed ${s.seed}`);
  if (job.state === 'done' && job.seconds != null) parts.push(`made in ${seconds(job.seconds)}`);
  return parts.join(' · ');
}

function progressText(job) {
  const p = job.progress || {};
  if (job.state === 'queued') return 'Waiting for a worker';
  if (job.state === 'interrupted') return 'Interrupted: it resumes from its last window';
  if (!p.window) return p.stage ? `${p.stage[0].toUpperCase()}${p.stage.slice(1)}…` : 'Starting…';
  const parts = [`Window ${p.window} of ${p.windows || '∞'}`];
  if (p.steps) parts.push(`step ${p.step || 0} of ${p.steps}`);
  if (p.eta_seconds != null) parts.push(`${seconds(p.eta_seconds)} left`);
  if (p.frames && job.started_ms) {
    const elapsed = (Date.now() - job.started_ms) / 1000;
    if (elapsed > 0) parts.push(`${(p.frames / elapsed).toFixed(1)} frames/s`);
  }
  return parts.join(' · ');
}

function newCard(job) {
  const card = $('card-template').content.firstElementChild.cloneNode(true);
  card.dataset.id = job.id;
  const title = card.querySelector('.job-title');
  title.id = `title-${job.id}`;
  card.setAttribute('aria-labelledby', title.id);
  const sidecar = card.querySelector('.sidecar');
  sidecar.addEventListener('toggle', async () => {
    if (!sidecar.open) return;
    const pre = card.querySelector('.sidecar-text');
    try {
      pre.textContent = JSON.stringify(await api('GET', `/v1/jobs/${job.id}/sidecar`), null, 2);
    } catch (e) {
      pre.textContent = e.message;
    }
  });
  const video = card.querySelector('.player');
  video.addEventListener('ended', () => {
    if (video.dataset.pending) {
      video.src = video.dataset.pending;
      delete video.dataset.pending;
    }
  });
  state.cards.set(job.id, card);
  return card;
}

/** Puts `card` into `list`, newest first. */
function place(card, list, created) {
  card.dataset.created = created;
  if (card.parentElement === list) return;
  const after = [...list.children].find((c) => Number(c.dataset.created) < created);
  list.insertBefore(card, after || null);
}

function upsert(job) {
  const previous = state.jobs.get(job.id);
  state.jobs.set(job.id, job);
  const card = state.cards.get(job.id) || newCard(job);
  const active = ACTIVE.includes(job.state);
  const hadFocus = card.contains(document.activeElement);
  place(card, active ? $('queue') : $('gallery'), job.created_ms);
  if (previous && previous.state !== job.state && !active) {
    announce(`“${titleOf(job)}” is ${job.state === 'done' ? 'done' : job.state}.`);
  }
  card.dataset.state = job.state;
  card.querySelector('.job-title').textContent = titleOf(job);
  card.querySelector('.badge').textContent = job.state;
  card.querySelector('.job-meta').textContent = metaOf(job);
  card.querySelector('.job-error').textContent = job.error || '';

  const progress = card.querySelector('.job-progress');
  progress.hidden = !active;
  if (active) {
    const p = job.progress || {};
    const bar = card.querySelector('.bar');
    bar.max = p.total_steps || p.steps || 1;
    bar.value = p.total_steps ? p.steps_done || 0 : p.step || 0;
    bar.setAttribute('aria-label', `Progress of ${titleOf(job)}`);
    card.querySelector('.progress-text').textContent = progressText(job);
  }

  const frames = framesOf(job);
  const preview = card.querySelector('.preview');
  const showPreview = active && Boolean(job.preview_url);
  preview.hidden = !showPreview;
  if (showPreview) {
    const src = `${job.preview_url}?frames=${frames}`;
    if (preview.getAttribute('src') !== src) preview.src = src;
    preview.alt = `Latest frame of ${titleOf(job)}`;
  }
  const video = card.querySelector('.player');
  video.hidden = frames === 0;
  if (frames > 0) {
    // A growing video is reloaded when a window is added, but never under someone watching or
    // paused mid-way: then the newer file waits until the video ends.
    const src = `${job.video_url}?frames=${frames}`;
    if (video.getAttribute('src') !== src) {
      const untouched = video.currentTime === 0 || video.ended;
      if (untouched && (video.paused || video.ended)) video.src = src;
      else video.dataset.pending = src;
    }
    video.setAttribute('aria-label', `Video: ${titleOf(job)}`);
  }
  card.querySelector('.sidecar').hidden = frames === 0;

  if (!previous || previous.state !== job.state || !card.querySelector('.actions').children.length) {
    renderActions(card, job);
    showCardMessage(card, '');
    if (hadFocus) focusIn(card, card.querySelector('.job-title'));
  }
  updateEmpty();
}

function actionButton(label, className, onClick, card) {
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = label;
  if (className) button.className = className;
  // "Delete" on its own is ambiguous in a list of cards: each button is described by its card's title.
  button.setAttribute('aria-describedby', card.querySelector('.job-title').id);
  button.addEventListener('click', onClick);
  return button;
}

function renderActions(card, job) {
  const actions = card.querySelector('.actions');
  actions.replaceChildren();
  if (ACTIVE.includes(job.state)) {
    actions.append(actionButton('Stop', 'danger stop', async (e) => {
      e.target.disabled = true;
      try {
        upsert(await api('POST', `/v1/jobs/${job.id}/cancel`));
        showCardMessage(card, 'Stopping at the next step…');
      } catch (err) {
        showCardError(card, err);
      } finally {
        e.target.disabled = false;
      }
    }, card));
    return;
  }
  if (framesOf(job) > 0) {
    const link = document.createElement('a');
    link.className = 'button quiet download';
    link.href = job.video_url;
    link.download = `skyreels-${job.id.slice(0, 8)}.${job.settings.format === 'gif' ? 'gif' : 'mp4'}`;
    link.textContent = 'Download';
    link.setAttribute('aria-describedby', card.querySelector('.job-title').id);
    actions.append(link);
  }
  actions.append(actionButton('Again, new seed', 'quiet again', async (e) => {
    const settings = { ...job.settings };
    delete settings.seed;
    e.target.disabled = true;
    try { upsert(await api('POST', '/v1/jobs', settings)); } catch (err) { showCardError(card, err); }
    e.target.disabled = false;
  }, card));
  if (job.state === 'done' || (job.state === 'cancelled' && framesOf(job) > 0)) {
    actions.append(actionButton('Extend this video', 'quiet extend', () => startExtension(job), card));
  }
  actions.append(actionButton('Delete', 'danger delete', async (e) => {
    const button = e.target;
    const armedAt = Number(button.dataset.armed || 0);
    if (!armedAt) {
      // Two presses: a stray click or key never deletes a video.
      button.dataset.armed = String(Date.now());
      button.textContent = 'Really delete?';
      setTimeout(() => { delete button.dataset.armed; button.textContent = 'Delete'; }, 4000);
      return;
    }
    // A double click or a held key is one gesture, not a confirmation.
    if (Date.now() - armedAt < 400) return;
    try { await api('DELETE', `/v1/jobs/${job.id}`); removeJob(job.id); } catch (err) { showCardError(card, err); }
  }, card));
}

function showCardError(card, e) {
  if (e.status === 401) showSignIn('Your session ended: sign in again.');
  else showCardMessage(card, e.message);
}

/** A message about an action on the card (kept apart from the job's own error, which events rewrite). */
function showCardMessage(card, text) {
  card.querySelector('.card-message').textContent = text;
}

function startExtension(job) {
  document.querySelector('#mode-extend').checked = true;
  showMode();
  setExtendJob(job);
  const s = job.settings;
  $('prompt').value = s.prompt || (s.story && s.story[s.story.length - 1].prompt) || '';
  for (const id of ['width', 'height', 'fps']) if (s[id]) $(id).value = s[id];
  syncLength('frames');
  $('create').scrollIntoView({ block: 'start' });
  $('prompt').focus();
}

start();
