// The operator console: watches the order sagas through the BFF's admin API
// and lets an operator retry or compensate a stuck one.
//
// Plain ES2020, no build step, no dependencies. Every string that comes from
// the API reaches the page through textContent or an attribute, never as
// HTML. The page's static parts (tiles, buttons, the detail's fields) are
// updated in place rather than rebuilt, so a refresh never swaps an element
// out from under a click (or a WebDriver test holding a reference to it).
'use strict';

(() => {
  const API = '/api/v1/admin';
  const TOKEN_KEY = 'commerce.console.token';
  const REFRESH_MS = 5000;
  const FOLLOW_EVERY_MS = 1000;
  const FOLLOW_FOR_MS = 60000;
  const PAGE_SIZE = 20;
  // A pause between two attempts at least this long is marked on the timeline.
  const QUIET_GAP_MS = 1000;
  const STATES = ['stuck', 'compensating', 'running', 'completed', 'compensated'];
  // States in which a saga may still change on its own (or by an operator).
  const UNFINISHED = new Set(['running', 'compensating', 'stuck']);

  const $ = (id) => document.getElementById(id);

  const view = {
    token: null,
    filter: { state: '', minAge: '', page: 0 },
    // Saga id shown in the detail pane, or null.
    selected: null,
    // Last detail loaded for `selected`: { saga, log }.
    detail: null,
    // Signature of the timeline drawn, so an unchanged log is not redrawn.
    timelineKey: '',
    // Start seqs of the timeline rows whose <details> the operator opened.
    openAnswers: new Set(),
    refreshing: false,
    // Saga id whose detail is being loaded, so loads of it do not pile up.
    detailLoading: null,
    following: null,
    rows: new Map(),
  };

  // ------------------------------------------------------------ DOM helpers

  // el('span', { class: 'x', title: 't' }, 'text', child...): attributes via
  // setAttribute, children as text nodes or elements, never parsed as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text, title) {
    const node = $(id);
    node.textContent = text;
    if (title !== undefined) node.title = title || '';
  }

  function badge(state) {
    return el('span', { class: `badge badge-${state}`, text: state || 'unknown' });
  }

  function setBadge(node, state) {
    node.className = `badge badge-${state}`;
    node.textContent = state || '';
  }

  // -------------------------------------------------------------- formatting

  // RFC 3339 → epoch ms. Fractions past milliseconds are cut, since not every
  // engine parses microseconds.
  function parseTime(text) {
    if (!text) return null;
    const trimmed = String(text).replace(/(\.\d{3})\d+/, '$1');
    const ms = Date.parse(trimmed);
    return Number.isNaN(ms) ? null : ms;
  }

  const pad = (n, width = 2) => String(n).padStart(width, '0');

  function clock(ms, withMillis) {
    if (ms === null) return '—';
    const d = new Date(ms);
    const base = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withMillis ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
  }

  // "10:42:03" today, "2 Dec 10:42" otherwise.
  function shortDateTime(ms) {
    if (ms === null) return '—';
    const d = new Date(ms);
    const now = new Date();
    if (d.toDateString() === now.toDateString()) return clock(ms, false);
    const month = d.toLocaleString('en', { month: 'short' });
    return `${d.getDate()} ${month} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function fullDateTime(ms) {
    return ms === null ? '' : new Date(ms).toISOString();
  }

  // Whole units for ages: "12 s", "3 min", "2 h", "4 d".
  function age(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
    if (ms < 0) return '0 s';
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h`;
    return `${Math.floor(h / 24)} d`;
  }

  // Precise durations for steps: "7 ms", "1.24 s", "2 min 3 s".
  function duration(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms < 1) return '<1 ms';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const m = Math.floor(ms / 60000);
    const s = Math.round((ms % 60000) / 1000);
    return s ? `${m} min ${s} s` : `${m} min`;
  }

  // Relative to now: "in 12 s", "3 min ago".
  function relative(ms) {
    if (ms === null) return '—';
    const delta = ms - Date.now();
    return delta >= 0 ? `in ${age(delta)}` : `${age(-delta)} ago`;
  }

  const shortId = (id) => (id ? String(id).slice(-8) : '—');

  // "2 · deduct_points"
  function stepLabel(saga) {
    const name = saga.currentStepName || '';
    return name ? `${saga.currentStep} · ${name}` : String(saga.currentStep ?? '—');
  }

  // The claims of a JWT, for the header only (the BFF checks the token).
  function tokenClaims(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const json = atob(part + '='.repeat((4 - (part.length % 4)) % 4));
      const claims = JSON.parse(json);
      return claims && typeof claims === 'object' ? claims : {};
    } catch (_) {
      return {};
    }
  }

  // ------------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(path, method = 'GET') {
    let response;
    try {
      response = await fetch(path, {
        method,
        cache: 'no-store',
        headers: { Authorization: `Bearer ${view.token}`, Accept: 'application/json' },
      });
    } catch (error) {
      throw new ApiError(0, {
        title: 'Cannot reach the BFF',
        detail: `${error.message || error}. The console retries on its next refresh.`,
      });
    }
    const text = await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    }
    if (!response.ok) {
      const problem = body && typeof body === 'object' && !Array.isArray(body)
        ? body
        : { title: response.statusText || `HTTP ${response.status}`, detail: text.slice(0, 300) };
      throw new ApiError(response.status, problem);
    }
    return body;
  }

  const sagaPath = (id) => `${API}/sagas/${encodeURIComponent(id)}`;

  // ----------------------------------------------------------------- errors

  // The banner shows one problem. One from a refresh goes away when a refresh
  // succeeds; one from an action stays until dismissed or the next action.
  let bannerSource = null;

  function showBanner(problem, source) {
    bannerSource = source;
    setText('error-title', problem.title || 'Error');
    setText('error-detail', problem.detail ? problem.detail : '');
    $('error-title').classList.toggle('with-detail', Boolean(problem.detail));
    const reason = $('error-reason');
    reason.textContent = problem.reason || '';
    reason.hidden = !problem.reason;
    $('error-banner').hidden = false;
  }

  function hideBanner(source) {
    if (source && bannerSource !== source) return;
    bannerSource = null;
    $('error-banner').hidden = true;
  }

  function handleError(error, source) {
    if (!(error instanceof ApiError)) {
      showBanner({ title: 'Console error', detail: String(error && error.message ? error.message : error) }, source);
      return;
    }
    const problem = error.problem;
    if (error.status === 401) {
      signOut(`${problem.title || 'Unauthorized'}: ${problem.detail || 'the token was refused'}`);
      return;
    }
    if (error.status === 403) {
      setConnection('denied', 'No operator role');
      showBanner({
        title: 'This token lacks the operator role',
        detail: problem.detail || 'Sign in with an operator token to use the console.',
        reason: problem.reason,
      }, source);
      return;
    }
    if (error.status === 0) setConnection('offline', 'BFF unreachable');
    else if (error.status >= 502) setConnection('degraded', 'Mesh unavailable');
    showBanner(problem, source);
  }

  // ---------------------------------------------------------------- session

  function setConnection(state, text) {
    $('conn').dataset.conn = state;
    setText('conn-text', text);
  }

  function tokenFromFragment() {
    const fragment = window.location.hash.replace(/^#/, '');
    if (!fragment) return null;
    const token = new URLSearchParams(fragment).get('token');
    if (token !== null) {
      // The token must not linger in the address bar, history or bookmarks.
      window.history.replaceState(null, '', window.location.pathname + window.location.search);
    }
    return token ? token.trim() : null;
  }

  function signIn(token) {
    view.token = token.replace(/^Bearer\s+/i, '').trim();
    sessionStorage.setItem(TOKEN_KEY, view.token);
    hideBanner();
    $('signin').hidden = true;
    $('signin-problem').hidden = true;
    $('console').hidden = false;
    $('session').hidden = false;
    showWho();
    setConnection('idle', 'Connecting…');
    refreshAll();
  }

  // Who the token names and when it expires, from its claims.
  function showWho() {
    const claims = tokenClaims(view.token);
    const who = claims.sub ? `as ${claims.sub}` : '';
    const expires = typeof claims.exp === 'number' ? ` · token expires ${relative(claims.exp * 1000)}` : '';
    setText('who', who + expires, claims.sub ? `Signed in as ${claims.sub}` : '');
  }

  function signOut(problemText) {
    view.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    stopFollowing();
    closeDetail();
    hideBanner();
    $('console').hidden = true;
    $('session').hidden = true;
    $('signin').hidden = false;
    const problem = $('signin-problem');
    problem.textContent = problemText || '';
    problem.hidden = !problemText;
    const input = $('signin-token');
    input.value = '';
    input.focus();
  }

  // -------------------------------------------------------------- refreshing

  async function refreshAll() {
    if (!view.token || view.refreshing) return;
    view.refreshing = true;
    try {
      const jobs = [loadCounts(), loadOutbox(), loadTable()];
      if (view.selected && !view.following) jobs.push(loadDetail(view.selected));
      const results = await Promise.allSettled(jobs);
      const failed = results.find((r) => r.status === 'rejected');
      if (!view.token) return;
      if (failed) {
        handleError(failed.reason, 'refresh');
      } else {
        hideBanner('refresh');
        setConnection('ok', 'Connected');
        setText('refreshed', `Updated ${clock(Date.now(), false)}`);
        showWho();
      }
    } finally {
      view.refreshing = false;
    }
  }

  function tick() {
    if (view.token && $('auto-refresh').checked) refreshAll();
  }

  // ------------------------------------------------------------------ counts

  async function loadCounts() {
    const counts = await api(`${API}/sagas/counts`);
    for (const state of STATES) {
      const tile = document.querySelector(`[data-tile-state="${state}"]`);
      const value = Number(counts[state] ?? 0);
      tile.querySelector('[data-count]').textContent = String(value);
      tile.dataset.value = String(value);
      tile.classList.toggle('has-items', value > 0);
    }
    const lost = Number(counts.leasesLost ?? 0);
    const lostTile = document.querySelector('[data-testid="count-leases-lost"]');
    lostTile.querySelector('[data-count]').textContent = String(lost);
    lostTile.dataset.value = String(lost);
    lostTile.classList.toggle('warn', lost > 0);
  }

  async function loadOutbox() {
    const outbox = await api(`${API}/outbox`);
    const pending = Number(outbox.pending ?? 0);
    setText('outbox-count', String(pending));
    $('outbox').dataset.value = String(pending);
    const oldest = parseTime(outbox.oldestPendingAt);
    setText('outbox-age', pending > 0 ? `oldest ${age(outbox.oldestPendingAgeMs)}` : 'nothing waiting',
      oldest === null ? '' : `Oldest pending event written ${fullDateTime(oldest)}`);
    setText('outbox-stream', outbox.stream || '—', 'Redis stream the relay publishes to');
    // A backlog older than half a minute means the relay or Redis is stuck.
    $('outbox').classList.toggle('warn', pending > 0 && Number(outbox.oldestPendingAgeMs) > 30000);
  }

  // ------------------------------------------------------------------ table

  function tableQuery() {
    const params = new URLSearchParams();
    if (view.filter.state) params.set('state', view.filter.state);
    if (view.filter.minAge) params.set('minAgeSeconds', view.filter.minAge);
    params.set('page', String(view.filter.page));
    params.set('size', String(PAGE_SIZE));
    return params.toString();
  }

  async function loadTable() {
    const query = tableQuery();
    const page = await api(`${API}/sagas?${query}`);
    // A filter changed while this was in flight: its own load draws.
    if (query !== tableQuery()) return;
    renderTable(Array.isArray(page.items) ? page.items : []);
  }

  function fillRow(tr, saga) {
    const created = parseTime(saga.createdAt);
    const updated = parseTime(saga.updatedAt);
    const cells = [
      el('td', { class: 'mono', title: saga.sagaId, text: shortId(saga.sagaId) }),
      el('td', { class: 'col-wide', text: saga.kind || '' }),
      el('td', { class: 'mono col-wide', title: saga.orderId, text: shortId(saga.orderId) }),
      el('td', {}, badge(saga.state)),
      el('td', { class: 'step', text: stepLabel(saga) }),
      el('td', { class: 'num col-wide', text: String(saga.attempts ?? 0) }),
      el('td', { class: 'reason', title: saga.reason || '' }, saga.reason ? el('code', { text: saga.reason }) : el('span', { class: 'muted', text: '—' })),
      el('td', { class: 'num', title: fullDateTime(created), text: age(created === null ? null : Date.now() - created) }),
      el('td', { class: 'col-wide', title: fullDateTime(updated), text: shortDateTime(updated) }),
    ];
    tr.replaceChildren(...cells);
    tr.dataset.state = saga.state;
    tr.classList.toggle('selected', saga.sagaId === view.selected);
    tr.setAttribute('aria-selected', saga.sagaId === view.selected ? 'true' : 'false');
  }

  function renderTable(items) {
    const tbody = $('saga-rows');
    const rows = items.map((saga) => {
      let tr = view.rows.get(saga.sagaId);
      if (!tr) {
        tr = el('tr', { 'data-testid': 'saga-row', 'data-saga-id': saga.sagaId, tabindex: 0 });
        view.rows.set(saga.sagaId, tr);
      }
      fillRow(tr, saga);
      return tr;
    });
    const sameOrder = rows.length === tbody.children.length && rows.every((tr, i) => tbody.children[i] === tr);
    if (!sameOrder) tbody.replaceChildren(...rows);
    const shown = new Set(items.map((s) => s.sagaId));
    for (const id of view.rows.keys()) if (!shown.has(id)) view.rows.delete(id);

    $('sagas-empty').hidden = items.length > 0;
    $('page-prev').disabled = view.filter.page === 0;
    $('page-next').disabled = items.length < PAGE_SIZE;
    setText('page-label', `Page ${view.filter.page + 1}`);
  }

  function markSelectedRow() {
    for (const [id, tr] of view.rows) {
      tr.classList.toggle('selected', id === view.selected);
      tr.setAttribute('aria-selected', id === view.selected ? 'true' : 'false');
    }
  }

  function applyFilter(changes) {
    Object.assign(view.filter, changes);
    $('state-filter').value = view.filter.state;
    $('age-filter').value = view.filter.minAge;
    for (const tile of document.querySelectorAll('[data-tile-state]')) {
      const active = tile.dataset.tileState === view.filter.state;
      tile.classList.toggle('active', active);
      tile.setAttribute('aria-pressed', active ? 'true' : 'false');
    }
    loadTable().then(() => hideBanner('refresh'), (error) => handleError(error, 'refresh'));
  }

  // ----------------------------------------------------------------- detail

  function openDetail(sagaId) {
    if (view.selected !== sagaId) {
      stopFollowing();
      view.selected = sagaId;
      view.detail = null;
      view.timelineKey = '';
      view.openAnswers.clear();
      $('action-result').hidden = true;
      const pane = $('detail');
      pane.dataset.state = '';
      setText('detail-id', shortId(sagaId), sagaId);
      $('timeline').replaceChildren(el('li', { class: 'timeline-empty muted', text: 'Loading…' }));
      setText('timeline-summary', '');
      $('retry-button').disabled = true;
      $('compensate-button').disabled = true;
    }
    $('detail').hidden = false;
    $('workspace').classList.add('with-detail');
    markSelectedRow();
    loadDetail(sagaId).catch((error) => handleError(error, 'refresh'));
  }

  function closeDetail() {
    stopFollowing();
    view.selected = null;
    view.detail = null;
    view.timelineKey = '';
    $('detail').hidden = true;
    $('detail').dataset.state = '';
    $('workspace').classList.remove('with-detail');
    markSelectedRow();
  }

  // Loads and draws one saga; answers its detail, or null when another saga
  // was selected meanwhile (or a load is already under way).
  async function loadDetail(sagaId) {
    if (view.detailLoading === sagaId) return null;
    view.detailLoading = sagaId;
    try {
      const detail = await api(sagaPath(sagaId));
      if (view.selected !== sagaId || !detail || !detail.saga) return null;
      view.detail = detail;
      renderSaga(detail.saga);
      renderTimeline(detail.saga, Array.isArray(detail.log) ? detail.log : []);
      return detail;
    } finally {
      if (view.detailLoading === sagaId) view.detailLoading = null;
    }
  }

  function renderSaga(saga) {
    const pane = $('detail');
    pane.dataset.state = saga.state;
    pane.dataset.sagaId = saga.sagaId;
    setText('detail-kind', `${saga.kind || 'saga'} saga`);
    setText('detail-id', saga.sagaId, saga.sagaId);
    setBadge($('detail-state'), saga.state);
    setText('detail-order', saga.orderId || '—', saga.orderId);
    setText('detail-step', stepLabel(saga));
    const next = parseTime(saga.nextAttemptAt);
    const nextText = next !== null && UNFINISHED.has(saga.state) && next > Date.now() ? ` · next ${relative(next)}` : '';
    setText('detail-attempts', `${saga.attempts ?? 0}${nextText}`, next === null ? '' : `Next attempt ${fullDateTime(next)}`);
    const reason = $('detail-reason');
    reason.replaceChildren(saga.reason ? el('code', { text: saga.reason }) : el('span', { class: 'muted', text: 'none' }));
    // A lease counts only while it lasts; an expired one names who held it.
    const leaseUntil = parseTime(saga.leaseExpiresAt);
    const leased = saga.leaseOwner && leaseUntil !== null && leaseUntil > Date.now();
    setText('detail-lease', leased ? `${saga.leaseOwner} · ${age(leaseUntil - Date.now())} left` : 'none',
      saga.leaseOwner ? `${leased ? 'Held' : 'Last held'} by ${saga.leaseOwner} until ${fullDateTime(leaseUntil)}` : '');
    const created = parseTime(saga.createdAt);
    const updated = parseTime(saga.updatedAt);
    setText('detail-created', `${shortDateTime(created)} (${relative(created)})`, fullDateTime(created));
    setText('detail-updated', `${shortDateTime(updated)} (${relative(updated)})`, fullDateTime(updated));

    const stuck = saga.state === 'stuck';
    const busy = view.following === saga.sagaId;
    $('retry-button').disabled = !stuck || busy;
    $('compensate-button').disabled = !stuck || busy;
    setText('actions-hint', busy
      ? 'Following the saga…'
      : stuck
        ? 'Stuck: an operator decides what happens next.'
        : 'Only a stuck saga can be retried or compensated.');
    $('actions-hint').classList.toggle('following', busy);
  }

  // ---------------------------------------------------------------- timeline

  // One row per step attempt: each `started` entry paired with the next entry
  // of the same step, direction and attempt. An outcome with no `started`
  // before it stands alone.
  function attemptsOf(log) {
    const entries = [...log].sort((a, b) => a.seq - b.seq);
    const open = new Map();
    const rows = [];
    for (const entry of entries) {
      const key = `${entry.direction}|${entry.step}|${entry.attempt}`;
      if (entry.outcome === 'started') {
        const row = { start: entry, end: null };
        rows.push(row);
        open.set(key, row);
      } else if (open.has(key)) {
        open.get(key).end = entry;
        open.delete(key);
      } else {
        rows.push({ start: null, end: entry });
      }
    }
    return rows;
  }

  function renderTimeline(saga, log) {
    const last = log.length ? log.reduce((a, b) => (b.seq > a.seq ? b : a)) : null;
    const key = `${saga.sagaId}|${saga.state}|${log.length}|${last ? last.seq : 0}`;
    if (key === view.timelineKey) return;
    view.timelineKey = key;

    const list = $('timeline');
    const rows = attemptsOf(log);
    if (!rows.length) {
      list.replaceChildren(el('li', { class: 'timeline-empty muted', text: 'No step has run yet.' }));
      setText('timeline-summary', '');
      return;
    }

    const active = saga.state === 'running' || saga.state === 'compensating';
    const times = log.map((e) => parseTime(e.createdAt)).filter((t) => t !== null);
    const spanStart = Math.min(...times);
    const spanEnd = Math.max(...times, active ? Date.now() : -Infinity);
    const span = Math.max(spanEnd - spanStart, 1);
    const forward = rows.filter((r) => (r.start || r.end).direction !== 'compensate').length;
    setText('timeline-summary',
      `${rows.length} attempt${rows.length === 1 ? '' : 's'} · ${forward} forward, ${rows.length - forward} undo · ${duration(spanEnd - spanStart)}`);

    // An open attempt is in flight only when it is the saga's latest one.
    const lastOpen = [...rows].reverse().find((r) => r.start && !r.end);
    const now = Date.now();
    const items = [];
    let previousEnd = null;
    for (const row of rows) {
      const startedAt = parseTime((row.start || row.end).createdAt);
      // A long quiet stretch (a saga waiting for an operator, a backoff)
      // is marked, so the eye sees where the time went.
      if (previousEnd !== null && startedAt !== null && startedAt - previousEnd >= QUIET_GAP_MS) {
        items.push(el('li', { class: 'timeline-gap', 'aria-hidden': 'true' },
          el('span', { text: `${duration(startedAt - previousEnd)} later` })));
      }
      items.push(timelineRow(row, { spanStart, span, inFlight: active && row === lastOpen, now }));
      const endedAt = parseTime((row.end || row.start).createdAt);
      if (endedAt !== null) previousEnd = Math.max(previousEnd ?? endedAt, endedAt);
    }
    list.replaceChildren(...items);
  }

  function timelineRow(row, { spanStart, span, inFlight, now }) {
    const first = row.start || row.end;
    const compensating = first.direction === 'compensate';
    const startedAt = parseTime(first.createdAt);
    const endedAt = row.end ? parseTime(row.end.createdAt) : inFlight ? now : null;
    const took = row.start && endedAt !== null && startedAt !== null ? endedAt - startedAt : null;
    const outcome = row.end ? row.end.outcome || 'unknown' : inFlight ? 'in-flight' : 'no-outcome';
    const outcomeText = { 'in-flight': 'in flight', 'no-outcome': 'no outcome' }[outcome] || outcome;
    const answerKey = String(first.seq);

    const bar = el('div', { class: 'bar-track', 'aria-hidden': 'true' });
    if (startedAt !== null) {
      const left = ((startedAt - spanStart) / span) * 100;
      const width = took === null ? 0 : (took / span) * 100;
      const fill = el('div', { class: `bar-fill outcome-${outcome}` });
      fill.style.left = `${Math.min(Math.max(left, 0), 99.4)}%`;
      fill.style.width = `${Math.max(width, 0.6)}%`;
      bar.append(fill);
    }

    const body = el('div', { class: 'entry-body' },
      el('span', { class: 'entry-step', title: first.stepName || '' },
        compensating ? el('span', { class: 'undo-mark', title: 'compensation', text: '↩' }) : null,
        first.stepName || `step ${first.step}`),
      el('span', { class: 'entry-attempt', text: `attempt ${first.attempt}` }),
      el('span', { class: `outcome outcome-${outcome}`, text: outcomeText }),
      bar,
      el('span', {
        class: 'entry-duration',
        title: row.start ? 'from started to its outcome' : 'an outcome with no started entry',
        text: row.start ? (inFlight ? `${duration(took)}…` : duration(took)) : '—',
      }));
    const error = row.end && row.end.error;
    if (error) body.append(el('pre', { class: 'entry-error', text: error }));
    const response = row.end ? row.end.response : null;
    if (response !== null && response !== undefined) {
      const details = el('details', { class: 'entry-answer' },
        el('summary', { text: 'Answer' }),
        el('pre', { text: typeof response === 'string' ? response : JSON.stringify(response, null, 2) }));
      details.open = view.openAnswers.has(answerKey);
      details.addEventListener('toggle', () => {
        if (details.open) view.openAnswers.add(answerKey);
        else view.openAnswers.delete(answerKey);
      });
      body.append(details);
    }

    return el('li', {
      class: `timeline-entry ${compensating ? 'compensate' : 'forward'} outcome-${outcome}`,
      'data-testid': 'timeline-entry',
      'data-direction': first.direction,
      'data-outcome': outcome,
      'data-step': first.stepName,
    },
    el('time', {
      class: 'entry-time',
      datetime: fullDateTime(startedAt),
      title: fullDateTime(startedAt),
      text: clock(startedAt, true),
    }),
    el('span', { class: 'entry-dot', 'aria-hidden': 'true' }),
    body);
  }

  // ----------------------------------------------------------------- actions

  const ACTIONS = {
    retry: {
      title: 'Retry this saga?',
      body: (saga) => `Retry runs the stuck step (${saga.currentStepName || `step ${saga.currentStep}`}) again now, ignoring its backoff. If the participant answers this time, the saga carries on from there by itself.`,
      confirm: 'Retry now',
      tone: 'btn-primary',
      done: 'Retry accepted',
    },
    compensate: {
      title: 'Compensate this saga?',
      body: () => 'Compensate undoes every completed step of this saga, last first, and the saga ends compensated: its order is rejected. This cannot be taken back.',
      confirm: 'Compensate',
      tone: 'btn-danger',
      done: 'Compensation started',
    },
  };

  // An in-page modal (not window.confirm, which a WebDriver test cannot
  // click like a page element); resolves true on Confirm.
  function confirmAction(action, saga) {
    const dialog = $('confirm-dialog');
    setText('confirm-title', action.title);
    setText('confirm-body', action.body(saga));
    const facts = [
      ['Saga', saga.sagaId],
      ['Order', saga.orderId],
      ['Step', stepLabel(saga)],
      ['Attempts', String(saga.attempts ?? 0)],
    ];
    $('confirm-facts').replaceChildren(...facts.map(([name, value]) =>
      el('div', {}, el('dt', { text: name }), el('dd', {}, el('code', { text: value || '—' })))));
    const yes = $('confirm-yes');
    yes.textContent = action.confirm;
    yes.className = `btn ${action.tone}`;
    return new Promise((resolve) => {
      const finish = (answer) => {
        yes.removeEventListener('click', onYes);
        $('confirm-no').removeEventListener('click', onNo);
        dialog.removeEventListener('cancel', onNo);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const onYes = () => finish(true);
      const onNo = (event) => {
        if (event) event.preventDefault();
        finish(false);
      };
      yes.addEventListener('click', onYes);
      $('confirm-no').addEventListener('click', onNo);
      dialog.addEventListener('cancel', onNo);
      dialog.showModal();
      $('confirm-no').focus();
    });
  }

  async function runAction(name) {
    const action = ACTIONS[name];
    const saga = view.detail && view.detail.saga;
    if (!saga || saga.state !== 'stuck') return;
    if (!(await confirmAction(action, saga))) return;
    hideBanner('action');
    $('retry-button').disabled = true;
    $('compensate-button').disabled = true;
    const result = $('action-result');
    try {
      const updated = await api(`${sagaPath(saga.sagaId)}/${name}`, 'POST');
      result.className = 'notice notice-ok';
      result.replaceChildren(el('strong', { text: `${action.done}.` }), ' ', el('span', { id: 'follow-status' }));
      result.hidden = false;
      setFollowStatus('Following the saga: now', updated.state);
      if (view.selected === saga.sagaId) renderSaga(updated);
      follow(saga.sagaId);
    } catch (error) {
      result.hidden = true;
      handleError(error, 'action');
      if (view.selected === saga.sagaId && view.detail) renderSaga(view.detail.saga);
    }
  }

  function setFollowStatus(text, state, after) {
    const status = $('follow-status');
    if (status) status.replaceChildren(`${text} `, badge(state), after || '');
  }

  // After an action: reload the detail every second until the saga stops
  // changing by itself (finished), or for at most a minute.
  async function follow(sagaId) {
    const token = {};
    view.following = sagaId;
    view.followToken = token;
    const since = Date.now();
    const until = since + FOLLOW_FOR_MS;
    const stillFollowing = () => view.followToken === token && view.selected === sagaId;
    try {
      while (stillFollowing() && Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, FOLLOW_EVERY_MS));
        if (!stillFollowing()) break;
        let detail = null;
        try {
          detail = await loadDetail(sagaId);
        } catch (error) {
          handleError(error, 'refresh');
        }
        if (!detail) continue;
        const state = detail.saga.state;
        if (!UNFINISHED.has(state)) {
          setFollowStatus('The saga is now', state, ` (${duration(Date.now() - since)} later).`);
          return;
        }
        setFollowStatus('Following the saga: now', state);
      }
      if (stillFollowing() && view.detail) {
        $('action-result').className = 'notice notice-warn';
        setFollowStatus('Still', view.detail.saga.state,
          ` after ${age(FOLLOW_FOR_MS)}: the console stopped following it (auto-refresh goes on).`);
      }
    } finally {
      if (view.followToken === token) {
        view.following = null;
        view.followToken = null;
        if (view.selected === sagaId && view.detail) renderSaga(view.detail.saga);
        refreshAll();
      }
    }
  }

  function stopFollowing() {
    view.following = null;
    view.followToken = null;
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $('signin-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('signin-token').value.trim();
      if (token) signIn(token);
    });
    $('sign-out').addEventListener('click', () => signOut(''));
    $('refresh-now').addEventListener('click', () => refreshAll());
    $('auto-refresh').addEventListener('change', (event) => {
      if (event.target.checked) refreshAll();
      else setText('refreshed', 'Paused');
    });
    $('error-close').addEventListener('click', () => hideBanner());

    for (const tile of document.querySelectorAll('[data-tile-state]')) {
      tile.addEventListener('click', () => {
        const state = tile.dataset.tileState;
        applyFilter({ state: view.filter.state === state ? '' : state, page: 0 });
      });
    }
    $('state-filter').addEventListener('change', (event) => applyFilter({ state: event.target.value, page: 0 }));
    $('age-filter').addEventListener('change', (event) => applyFilter({ minAge: event.target.value, page: 0 }));
    $('page-prev').addEventListener('click', () => applyFilter({ page: Math.max(0, view.filter.page - 1) }));
    $('page-next').addEventListener('click', () => applyFilter({ page: view.filter.page + 1 }));

    const rows = $('saga-rows');
    rows.addEventListener('click', (event) => {
      const tr = event.target.closest('tr[data-saga-id]');
      if (tr) openDetail(tr.dataset.sagaId);
    });
    rows.addEventListener('keydown', (event) => {
      const tr = event.target.closest('tr[data-saga-id]');
      if (tr && (event.key === 'Enter' || event.key === ' ')) {
        event.preventDefault();
        openDetail(tr.dataset.sagaId);
      }
    });

    $('detail-close').addEventListener('click', closeDetail);
    $('retry-button').addEventListener('click', () => runAction('retry'));
    $('compensate-button').addEventListener('click', () => runAction('compensate'));
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && !$('confirm-dialog').open && view.selected) closeDetail();
    });
  }

  function start() {
    wire();
    // A link with another #token= while the console is open signs in anew.
    window.addEventListener('hashchange', () => {
      const token = tokenFromFragment();
      if (token) {
        closeDetail();
        signIn(token);
      }
    });
    window.setInterval(tick, REFRESH_MS);
    const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token);
    else signOut('');
  }

  start();
})();
