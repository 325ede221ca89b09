'use strict';
/*
 * Gateway viewer: watches the runs of every session a token may read, over the WebSocket at ./ws.
 *
 * State model (all in `state`; the DOM is a projection of it, redrawn per run on a short timer):
 * - connection: token (kept in sessionStorage), ws, hello (the hello-ok payload, null until it
 *   arrives), backoff (0.5 s doubling to 5 s, reset by hello-ok), pending requests by id.
 * - sessions: Map key -> Session {key, el, runs: Map runId -> Run, dropped, subscribed, touched}.
 *   They come from hello-ok's auth.sessions, or (for "*") from polling sessions.list every 2 s;
 *   at most MAX_SESSIONS are kept (the least recently active idle one is unsubscribed and dropped).
 * - Run {id, sortKey (start time), status, agentSeq, text, thinking, tools, dropped, ...}.
 *   agentSeq is the highest agent-event seq applied: agent events at or below it are duplicates,
 *   and it is what a reconnect sends as resume {runId: agentSeq}. Chat events and seq-gap errors
 *   are annotations carrying the seq of the event they are about; a chat snapshot replaces the
 *   merged text unless newer agent events were applied already. At most MAX_RUNS runs per
 *   session, newest (by start time) first; the oldest finished run is dropped first.
 * - text and thinking merge like the bus's chat projection: finished segments + the current one;
 *   a delta appends to it, a cumulative text extends it or (if it diverges) starts a new segment.
 */

const MAX_RUNS = 50, MAX_SESSIONS = 100, MAX_TOOLS = 50, SUMMARY_CHARS = 160, POLL_MS = 2000;
const SEP = '\n\n';
const TOKEN_KEY = 'pipeline.viewer.token';

const EVENT_HANDLERS = {
  'connect.challenge': handshake, agent: onAgent, chat: onChat, gap: onGap, resync: onResync,
};

const state = {
  token: null, ws: null, hello: null, backoff: 500, timer: 0, poll: 0, nextId: 0,
  pending: new Map(), scopes: new Set(), wildcard: false,
  sessions: new Map(), dirty: new Set(), flushTimer: 0,
};

const $ = (selector, root = document) => root.querySelector(selector);
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

const fromTemplate = (id) => document.getElementById(id).content.firstElementChild.cloneNode(true);
const h = (tag, className, text) => Object.assign(document.createElement(tag), { className, textContent: text });
const showNote = (el, text) => Object.assign(el, { textContent: text, hidden: !text });

function store(value) { // get (no argument), set, or clear (null) the kept token
  try {
    if (value === undefined) return sessionStorage.getItem(TOKEN_KEY);
    if (value === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, value);
  } catch (err) { /* storage disabled: the token lives as long as this page */ }
  return null;
}

function summary(value) {
  let text = value;
  if (typeof value !== 'string') {
    try { text = JSON.stringify(value) || ''; } catch (err) { text = String(value); }
  }
  return text.length > SUMMARY_CHARS ? text.slice(0, SUMMARY_CHARS - 1) + '…' : text;
}

const newKey = () => (window.crypto && crypto.randomUUID ? crypto.randomUUID()
  : Date.now().toString(36) + Math.random().toString(36).slice(2));
const canWrite = () => state.hello !== null && state.scopes.has('write');

// ---- text merge (mirrors the buffer of pipeline/_chat.py) ---------------------------------------

const newBuf = () => ({ done: '', seg: '' });
const bufValue = (buf) => buf.done + buf.seg;

function bufMerge(buf, text, delta) {
  if (typeof text === 'string' && text) {
    if (text.startsWith(buf.seg)) buf.seg = text;
    else if (!buf.seg.startsWith(text)) { buf.done += buf.seg + SEP; buf.seg = text; }
  } else if (typeof delta === 'string') {
    buf.seg += delta;
  }
}

function bufReset(buf, value) { // adopt a snapshot; its last segment is the current one
  const cut = value.lastIndexOf(SEP);
  buf.done = cut < 0 ? '' : value.slice(0, cut + SEP.length);
  buf.seg = cut < 0 ? value : value.slice(cut + SEP.length);
}

// ---- connection ---------------------------------------------------------------------------------

const setStatus = (kind, text) => { Object.assign($('#status'), { textContent: text }).dataset.state = kind; };

function connect() {
  clearTimeout(state.timer);
  state.timer = 0;
  setStatus('connecting', 'connecting…');
  const url = new URL('ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = url.hash = '';
  const ws = new WebSocket(url.href);
  Object.assign(state, { ws, hello: null });
  ws.onmessage = (e) => { if (state.ws === ws) onFrame(e.data); };
  ws.onclose = (e) => { if (state.ws === ws) onClose(e); };
}

function request(method, params) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error('offline'));
  const id = String(++state.nextId);
  ws.send(JSON.stringify({ type: 'req', id, method, params }));
  return new Promise((resolve, reject) => state.pending.set(id, { resolve, reject }));
}

function settle(frame) {
  const id = String(frame.id), waiter = state.pending.get(id);
  if (!waiter) return;
  state.pending.delete(id);
  if (frame.ok) return waiter.resolve(frame.payload || {});
  const error = new Error((frame.error && frame.error.message) || 'request failed');
  error.code = (frame.error && frame.error.code) || 'error';
  waiter.reject(error);
}

function onFrame(raw) {
  let frame;
  try { frame = JSON.parse(raw); } catch (err) { return; }
  if (!frame || typeof frame !== 'object') return;
  if (frame.type === 'res') return settle(frame);
  const handler = frame.type === 'event' && EVENT_HANDLERS[frame.event];
  if (handler) handler(frame.payload || {});
}

function handshake() {
  const params = { auth: { token: state.token }, client: { name: 'viewer' } };
  request('connect', params).then(onHello, (err) => {
    if (err.code) authFailed(err.message); // an error answer; a close is onClose's business
  });
}

function onHello(hello) {
  const auth = hello.auth || {}, allowed = auth.sessions || ['*'], server = hello.server || {};
  Object.assign(state, { hello, backoff: 500, scopes: new Set(auth.scopes || ['read']) });
  state.wildcard = allowed.includes('*');
  setStatus('connected', `connected · ${server.connId || 'ws'} · scopes: ${[...state.scopes].join(', ')}`);
  $('#forget').hidden = false;
  $('#start').hidden = !(state.wildcard && canWrite());
  for (const key of allowed) if (key !== '*') ensureSession(key);
  for (const session of state.sessions.values()) subscribe(session);
  if (state.wildcard) state.poll = setInterval(pollSessions, POLL_MS);
  if (state.wildcard) pollSessions();
  refreshAll();
}

function onClose(e) {
  clearInterval(state.poll);
  const hadHello = state.hello !== null;
  Object.assign(state, { ws: null, hello: null });
  for (const waiter of state.pending.values()) waiter.reject(new Error('connection closed'));
  state.pending.clear();
  for (const session of state.sessions.values()) session.subscribed = false;
  refreshAll();
  const reason = e.reason || `code ${e.code}`;
  // A 1008 before hello-ok is a refused token: ask again rather than loop.
  if (e.code === 1008 && !hadHello && !/slow consumer/i.test(e.reason)) return authFailed(reason);
  const delay = state.backoff;
  state.backoff = Math.min(delay * 2, 5000);
  setStatus('offline', `offline (${reason}); reconnecting in ${(delay / 1000).toFixed(1)} s`);
  state.timer = setTimeout(connect, delay);
}

function authFailed(reason) { reset(); store(null); showLogin(reason); }

function reset() { // forget the connection, the token and everything shown
  const ws = state.ws;
  Object.assign(state, { ws: null, hello: null, token: null, backoff: 500 });
  if (ws) ws.close(1000, 'viewer closed');
  clearTimeout(state.timer);
  clearInterval(state.poll);
  state.timer = 0;
  for (const collection of [state.pending, state.sessions, state.dirty]) collection.clear();
  $('#sessions').replaceChildren();
  $('#forget').hidden = $('#start').hidden = $('#no-sessions').hidden = true;
}

function start(token) {
  reset();
  store(state.token = token);
  $('#login').hidden = true;
  connect();
}

function showLogin(reason) {
  showNote($('#login-error'), reason ? `Refused: ${reason}` : '');
  $('#login').hidden = false;
  setStatus('signed-out', reason ? `sign-in refused: ${reason}` : 'enter a token to start');
  $('#token').focus();
}

// ---- sessions -----------------------------------------------------------------------------------

function ensureSession(key) {
  let session = state.sessions.get(key);
  if (session) return session;
  const el = fromTemplate('tpl-session');
  el.dataset.sessionKey = key;
  $('.key', el).textContent = key;
  session = { key, el, runs: new Map(), dropped: 0, subscribed: false, touched: Date.now() };
  const form = $('form.send', el);
  form.addEventListener('submit', (e) => { e.preventDefault(); sendChat(session, form); });
  const after = [...$('#sessions').children].find((other) => other.dataset.sessionKey > key);
  $('#sessions').insertBefore(el, after || null);
  state.sessions.set(key, session);
  trimSessions();
  renderSession(session);
  return session;
}

function subscribe(session) {
  const resume = {};
  for (const run of session.runs.values()) if (run.agentSeq > 0) resume[run.id] = run.agentSeq;
  // Always resume: runs this page has not seen yet (ones that started before it connected)
  // are replayed whole from the gateway's buffer; known runs continue after their last seq.
  const params = { sessionKey: session.key, resume };
  session.subscribed = true;
  return request('sessions.subscribe', params).then(() => showNote($('.session-note', session.el), ''), (err) => {
    session.subscribed = false;
    if (err.code) showNote($('.session-note', session.el), `Subscribe failed: ${err.message}`);
  });
}

function pollSessions() {
  request('sessions.list', {}).then((answer) => {
    for (const item of answer.sessions || []) {
      const session = ensureSession(String(item.sessionKey));
      if (!session.subscribed) subscribe(session);
    }
  }, () => {});
}

function trimSessions() {
  if (state.sessions.size <= MAX_SESSIONS) return;
  const idle = [...state.sessions.values()]
    .filter((s) => ![...s.runs.values()].some((run) => run.status === 'running'))
    .sort((a, b) => a.touched - b.touched)[0];
  if (!idle) return;
  if (idle.subscribed) request('sessions.unsubscribe', { sessionKey: idle.key }).catch(() => {});
  for (const run of idle.runs.values()) state.dirty.delete(run);
  idle.el.remove();
  state.sessions.delete(idle.key);
}

function renderSession(session) {
  const runs = [...session.runs.values()];
  const live = runs.filter((run) => run.status === 'running').length;
  $('.count', session.el).textContent = `${plural(runs.length, 'run')}, ${live} live`;
  $('.empty', session.el).hidden = runs.length > 0;
  const dropped = session.dropped ? `⚠ ${plural(session.dropped, 'event')} dropped (slow connection)` : '';
  showNote($('.session-gap', session.el), dropped);
  $('form.send', session.el).hidden = !canWrite();
}

function refreshAll() {
  for (const session of state.sessions.values()) {
    renderSession(session);
    for (const run of session.runs.values()) markDirty(run);
  }
  $('#no-sessions').hidden = state.sessions.size > 0 || state.hello === null;
}

// ---- runs ---------------------------------------------------------------------------------------

function ensureRun(session, runId, sortKey) {
  session.touched = Date.now();
  let run = session.runs.get(runId);
  if (run) return run;
  const keys = [...session.runs.values()].map((other) => other.sortKey);
  if (keys.length >= MAX_RUNS && sortKey < Math.min(...keys)) return null; // older than all kept
  const el = fromTemplate('tpl-run');
  Object.assign(el.dataset, { runId, sortKey: String(sortKey) });
  $('.run-id', el).textContent = runId;
  run = {
    id: runId, session, el, sortKey, status: 'running', agentSeq: 0, text: newBuf(),
    thinking: newBuf(), tools: new Map(), toolsChanged: false, dropped: 0, seqGap: '',
    reason: '', error: '', note: '', aborting: false,
  };
  $('.abort', el).addEventListener('click', () => abortRun(run));
  const runs = $('.runs', session.el);
  const after = [...runs.children].find((other) => Number(other.dataset.sortKey) < sortKey);
  runs.insertBefore(el, after || null);
  session.runs.set(runId, run);
  trimRuns(session);
  $('#no-sessions').hidden = true;
  markDirty(run);
  return run;
}

function trimRuns(session) {
  while (session.runs.size > MAX_RUNS) {
    const runs = [...session.runs.values()].sort((a, b) => a.sortKey - b.sortKey);
    const victim = runs.find((run) => run.status !== 'running') || runs[0];
    victim.el.remove();
    session.runs.delete(victim.id);
    state.dirty.delete(victim);
  }
}

function lookupRun(p, sortKey) {
  if (typeof p.runId !== 'string' || typeof p.sessionKey !== 'string') return null;
  return ensureRun(ensureSession(p.sessionKey), p.runId, Number(sortKey) || Date.now());
}

function onAgent(p) {
  const data = p.data || {};
  if (p.stream === 'chat') return onChat({ ...data, runId: p.runId, sessionKey: p.sessionKey, seq: p.seq });
  const run = lookupRun(p, data.startedAt || p.ts);
  if (!run) return;
  if (p.stream === 'error' && data.reason === 'seq gap') { // an annotation: it moves no seq
    run.seqGap = `seq gap: expected ${data.expected}, received ${data.received}`;
    return markDirty(run);
  }
  const seq = Number(p.seq) || 0;
  if (seq <= run.agentSeq) return; // applied already (a replay overlap)
  run.agentSeq = seq;
  if (p.stream === 'lifecycle') onLifecycle(run, data);
  else if (p.stream === 'assistant') bufMerge(run.text, data.text, data.delta);
  else if (p.stream === 'thinking') bufMerge(run.thinking, data.text, data.delta);
  else if (p.stream === 'tool') onTool(run, data);
  markDirty(run);
}

function onLifecycle(run, data) {
  if (data.phase === 'start') Object.assign(run, { status: 'running', error: '', reason: '' });
  else if (data.phase === 'end') Object.assign(run, { status: data.aborted ? 'aborted' : 'ok', reason: data.stopReason || '' });
  else if (data.phase === 'error') {
    Object.assign(run, { status: data.errorKind === 'timeout' ? 'timeout' : 'error', error: data.error || '' });
  }
}

function onTool(run, data) {
  const id = String(data.toolCallId || data.name || 'tool');
  let tool = run.tools.get(id);
  if (!tool) {
    if (run.tools.size >= MAX_TOOLS) run.tools.delete(run.tools.keys().next().value); // the oldest
    run.tools.set(id, tool = { name: 'tool', status: 'running', args: '', result: '', progress: null });
  }
  if (data.name) tool.name = String(data.name);
  if (data.args !== undefined) tool.args = summary(data.args);
  if (typeof data.progress === 'number') tool.progress = data.progress;
  if (data.phase === 'result') {
    const failed = data.isError === true || (data.error !== undefined && data.error !== null);
    tool.status = failed ? 'error' : 'done';
    tool.result = summary(failed && data.error != null ? data.error : data.result);
  }
  run.toolsChanged = true;
}

function applyChat(run, chat) {
  if (chat.message && (Number(chat.seq) || 0) >= run.agentSeq) { // not older than what we merged
    const content = Array.isArray(chat.message.content) ? chat.message.content : [];
    const join = (type) => content.filter((c) => c && c.type === type).map((c) => String(c[type] || '')).join('');
    bufReset(run.text, join('text'));
    bufReset(run.thinking, join('thinking'));
  }
  const failed = chat.errorKind === 'timeout' ? 'timeout' : 'error';
  if (chat.state === 'aborted') Object.assign(run, { status: 'aborted', reason: chat.stopReason || run.reason });
  else if (chat.state === 'error') Object.assign(run, { status: failed, error: chat.errorMessage || run.error });
  else if (chat.state === 'final' && run.status === 'running') Object.assign(run, { status: 'ok', reason: chat.stopReason || run.reason });
}

function onChat(p) {
  const run = lookupRun(p, p.message && p.message.timestamp);
  if (run) { applyChat(run, p); markDirty(run); }
}

function onGap(p) {
  const dropped = Number(p.dropped) || 0;
  if (typeof p.sessionKey !== 'string' || dropped <= 0) return;
  const session = ensureSession(p.sessionKey);
  session.dropped += dropped;
  for (const run of session.runs.values()) {
    if (run.status === 'running') { run.dropped += dropped; markDirty(run); }
  }
  renderSession(session);
}

function onResync(p) {
  const chat = p.chat && typeof p.chat === 'object' ? p.chat : null;
  const run = lookupRun(p, chat && chat.message && chat.message.timestamp);
  if (!run) return;
  if (chat) {
    applyChat(run, { ...chat, seq: Infinity, message: chat.message || { content: [] } });
    run.agentSeq = Math.max(run.agentSeq, Number(chat.seq) || 0);
    run.note = 'Resynced: older events had expired; the text is the server\'s snapshot.';
  } else {
    run.note = 'Resync: older events had expired and the server holds no snapshot.';
  }
  markDirty(run);
}

// ---- actions ------------------------------------------------------------------------------------

function abortRun(run) {
  run.aborting = true;
  markDirty(run);
  request('chat.abort', { sessionKey: run.session.key, runId: run.id })
    .then((answer) => { run.note = (answer.aborted || []).length ? '' : 'Nothing to abort: the run had ended.'; })
    .catch((err) => { run.note = `Abort failed: ${err.message}`; })
    .finally(() => { run.aborting = false; markDirty(run); });
}

function sendChat(session, form) {
  const input = form.elements.message, button = $('button', form), message = input.value.trim();
  if (!message) return;
  // The same text sent again after a failure keeps its idempotency key: never a second run.
  if (form.dataset.pendingMessage !== message) form.dataset.idempotencyKey = newKey();
  form.dataset.pendingMessage = message;
  button.disabled = true;
  const params = { sessionKey: session.key, message, idempotencyKey: form.dataset.idempotencyKey };
  request('chat.send', params)
    .then((answer) => {
      input.value = '';
      delete form.dataset.pendingMessage;
      if (typeof answer.runId === 'string') ensureRun(session, answer.runId, Date.now());
      showNote($('.form-note', form), answer.runId ? `Started ${answer.runId}` : 'Sent');
    })
    .catch((err) => showNote($('.form-note', form), `Send failed: ${err.message}`))
    .finally(() => { button.disabled = false; });
}

function onStart(e) { // the "*" token's form: any session key
  e.preventDefault();
  const form = e.target, key = form.elements.sessionKey.value.trim();
  if (!key) return;
  const session = ensureSession(key);
  (session.subscribed ? Promise.resolve() : subscribe(session)).then(() => sendChat(session, form));
}

// ---- rendering ----------------------------------------------------------------------------------

function markDirty(run) {
  state.dirty.add(run);
  if (!state.flushTimer) state.flushTimer = setTimeout(flush, 30);
}

function flush() {
  state.flushTimer = 0;
  const sessions = new Set();
  for (const run of state.dirty) { renderRun(run); sessions.add(run.session); }
  state.dirty.clear();
  for (const session of sessions) if (state.sessions.get(session.key) === session) renderSession(session);
}

function renderRun(run) {
  const el = run.el, badge = $('.badge', el), abort = $('.abort', el), thinking = bufValue(run.thinking);
  el.dataset.status = badge.dataset.status = badge.textContent = run.status;
  $('.meta', el).textContent = run.error || (run.reason ? `stop: ${run.reason}` : '');
  $('.text', el).textContent = bufValue(run.text);
  $('.thinking', el).hidden = !thinking;
  $('.thinking-text', el).textContent = thinking;
  abort.hidden = !(canWrite() && run.status === 'running');
  abort.disabled = run.aborting;
  abort.textContent = run.aborting ? 'Aborting…' : 'Abort';
  const dropped = run.dropped ? `⚠ ${plural(run.dropped, 'event')} dropped while the run was live` : '';
  showNote($('.gap', el), [dropped, run.seqGap].filter(Boolean).join(' · '));
  showNote($('.note', el), run.note);
  if (run.toolsChanged || run.status !== el.dataset.toolsFor) renderTools(run);
}

function renderTools(run) {
  run.toolsChanged = false;
  run.el.dataset.toolsFor = run.status;
  const items = [...run.tools.entries()].map(([id, tool]) => {
    const status = tool.status === 'running' && run.status !== 'running' ? 'interrupted' : tool.status;
    const progress = status === 'running' && tool.progress !== null ? ` ${Math.round(tool.progress * 100)}%` : '';
    const li = h('li', 'tool', '');
    Object.assign(li.dataset, { toolCallId: id, status });
    li.append(h('span', 'tool-name', tool.name), h('span', 'tool-status', status + progress));
    if (tool.args) li.append(h('code', 'tool-args', tool.args));
    if (tool.result) li.append(h('code', 'tool-result', `→ ${tool.result}`));
    return li;
  });
  $('.tools', run.el).replaceChildren(...items);
  $('.tools', run.el).hidden = items.length === 0;
}

// ---- start --------------------------------------------------------------------------------------

function boot() {
  $('#login').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('#token').value.trim();
    if (token) start(token);
  });
  $('#start').addEventListener('submit', onStart);
  $('#forget').addEventListener('click', () => { reset(); store(null); showLogin(''); });
  window.addEventListener('online', () => { if (state.timer) connect(); });
  const params = new URLSearchParams(location.search);
  if (params.has('token')) { // take it, keep it for reloads, and take it out of the address bar
    const token = params.get('token').trim();
    params.delete('token');
    const query = params.toString();
    history.replaceState(history.state, '', location.pathname + (query ? `?${query}` : '') + location.hash);
    if (token) store(token);
  }
  const token = store();
  if (token) start(token);
  else showLogin('');
}

boot();
