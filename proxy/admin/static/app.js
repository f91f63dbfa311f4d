// trackrelay operator console: plain JS, no build step. Everything shown is built with textContent
// (never innerHTML with data: event payloads are user input).
'use strict'

const $ = (sel, root = document) => root.querySelector(sel)
const CSRF = { 'X-TrackRelay-CSRF': '1' }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else if (v !== undefined && v !== null) node.setAttribute(k, v)
  }
  for (const c of children) {
    if (c === null || c === undefined) continue
    node.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return node
}

function fmtTime(epoch) {
  if (!epoch) return '-'
  return new Date(epoch * 1000).toISOString().replace('T', ' ').replace('Z', '')
}

function pretty(value) {
  return typeof value === 'string' ? value : JSON.stringify(value, null, 2)
}

async function api(path, opts = {}) {
  const init = { credentials: 'same-origin', ...opts, headers: { ...(opts.headers || {}) } }
  if (init.method && init.method !== 'GET') Object.assign(init.headers, CSRF, { 'Content-Type': 'application/json' })
  const resp = await fetch(path, init)
  if (resp.status === 401) { location.reload(); throw new Error('signed out') }
  const data = await resp.json().catch(() => ({}))
  return { status: resp.status, data }
}

let info = { destinations: [], sources: [] }

// -- tabs -------------------------------------------------------------------------------------------
const views = { overview: startOverview, live: startLive, trace: () => {}, tester: () => {}, dead: loadDead }
function show(view) {
  for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.view === view)
  for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== `view-${view}`
  if (view !== 'live') stopLive()
  views[view]()
  if (location.hash !== `#${view}`) history.replaceState(null, '', `#${view}`)
}

// -- overview ---------------------------------------------------------------------------------------
const charts = {}
let overviewTimer = null
const PALETTE = ['#2f6fdf', '#2a9d5b', '#e67e22', '#8e44ad', '#c0392b', '#16a085', '#7f8c8d', '#d35400']

function drawChart(id, minutes, series) {
  const target = document.getElementById(id)
  const names = Object.keys(series)
  const data = [minutes, ...names.map((n) => series[n])]
  const key = names.join('|')
  const width = Math.max(300, target.clientWidth || 440)
  if (charts[id] && charts[id].key === key) { charts[id].plot.setData(data); return }
  if (charts[id]) charts[id].plot.destroy()
  target.textContent = ''
  if (!names.length) { target.append(el('p', { class: 'muted' }, 'no data yet')); delete charts[id]; return }
  const opts = {
    width, height: 180,
    series: [{}, ...names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true }))],
    axes: [{}, { size: 50 }],
    scales: { x: { time: true } },
  }
  charts[id] = { key, plot: new uPlot(opts, data, target) }
}

async function refreshOverview() {
  const { status, data } = await api('/api/stats')
  if (status !== 200) return
  const s = data.spool
  const series = data.series
  const summary = $('#summary')
  summary.textContent = ''
  const sum = (arr) => arr.reduce((a, b) => a + (b || 0), 0)
  const accepted = sum(Object.values(series.sources).map((v) => sum(v.accepted)))
  const delivered = sum(Object.values(series.destinations).map((v) => sum(v.delivered)))
  const cards = [['Engine', s.engine], ['Stored events', s.events], ['Spool bytes', `${s.bytes.toLocaleString()} / ${s.max_bytes.toLocaleString()}`],
    ['Accepted (1 h)', accepted], ['Delivered (1 h)', delivered], ['Live watchers', data.live.watchers],
    ['Live dropped', data.live.dropped], ['Traces kept', `${data.traces.kept} / ${data.traces.max}`]]
  if (s.full) cards.unshift(['Spool', 'FULL (ingest answers 429)'])
  for (const [label, value] of cards) summary.append(el('div', { class: 'card' }, label, el('b', {}, value)))
  const pick = (obj, key) => Object.fromEntries(Object.entries(obj).map(([n, v]) => [n, v[key]]))
  drawChart('chart-accepted', series.minutes, pick(series.sources, 'accepted'))
  drawChart('chart-delivered', series.minutes, pick(series.destinations, 'delivered'))
  drawChart('chart-errors', series.minutes, pick(series.destinations, 'errors'))
  drawChart('chart-backlog', series.minutes, pick(series.destinations, 'backlog'))
  const lat = {}
  for (const [n, v] of Object.entries(series.destinations)) { lat[`${n} p50`] = v.p50; lat[`${n} p99`] = v.p99 }
  drawChart('chart-latency', series.minutes, lat)
  const tbody = $('#dest-table tbody')
  tbody.textContent = ''
  for (const [name, d] of Object.entries(s.destinations)) {
    const f = series.destinations[name] || { delivered: [], errors: [] }
    tbody.append(el('tr', {}, el('td', {}, name), el('td', {}, d.backlog), el('td', {}, d.retries), el('td', {}, d.dead),
      el('td', {}, fmtTime(d.oldest_undelivered)), el('td', {}, sum(f.delivered)), el('td', {}, sum(f.errors))))
  }
}

function startOverview() {
  refreshOverview().catch((e) => console.warn(e))
  clearInterval(overviewTimer)
  overviewTimer = setInterval(() => {
    if (!$('#view-overview').hidden) refreshOverview().catch((e) => console.warn(e))
  }, 10000)
}

// -- live -------------------------------------------------------------------------------------------
let source = null
let paused = false
let pending = []
const LIVE_ROWS = 500

function liveFilters() {
  const params = new URLSearchParams()
  for (const [k, v] of new FormData($('#live-filters'))) if (v) params.set(k, v)
  return params
}

function stopLive() {
  if (source) { source.close(); source = null }
}

function startLive() {
  stopLive()
  const status = $('#live-status')
  source = new EventSource(`/api/live?${liveFilters()}`)
  source.addEventListener('hello', () => { status.textContent = paused ? 'paused' : 'watching' })
  source.addEventListener('item', (ev) => {
    const item = JSON.parse(ev.data)
    if (paused) { pending.push(item); if (pending.length > LIVE_ROWS) pending.shift(); status.textContent = `paused (${pending.length} waiting)`; return }
    addLiveRow(item)
  })
  source.addEventListener('dropped', (ev) => {
    status.textContent = `watching; ${JSON.parse(ev.data).dropped} item(s) dropped (this view was too slow)`
  })
  source.onerror = () => { status.textContent = 'reconnecting…' }
}

function addLiveRow(item) {
  const tbody = $('#live-table tbody')
  const who = item.userId || item.anonymousId || ''
  const where = item.kind === 'accepted'
    ? [(item.destinations || []).join(', ') || '(none)', ...Object.entries(item.skipped || {}).map(([d, r]) => `${d}: ${r}`)].join('; ')
    : `${item.code ? item.code + ': ' : ''}${item.reason || ''}`
  const row = el('tr', { class: `${item.kind} clickable`, 'data-message-id': item.messageId || '' },
    el('td', { class: 'mono' }, fmtTime(item.at)), el('td', {}, item.kind), el('td', {}, item.source || ''),
    el('td', {}, item.type || ''), el('td', {}, item.event || ''), el('td', { class: 'mono' }, who),
    el('td', { class: 'mono' }, item.messageId || ''), el('td', {}, where))
  row.addEventListener('click', () => {
    if (item.kind === 'accepted' && item.messageId) { $('#trace-id').value = item.messageId; show('trace'); runTrace() }
    else {
      const detail = row.nextSibling && row.nextSibling.classList.contains('detail') ? row.nextSibling : null
      if (detail) detail.remove()
      else row.after(el('tr', { class: 'detail' }, el('td', { colspan: 8 }, el('pre', {}, pretty(item.payload || item)))))
    }
  })
  tbody.prepend(row)
  while (tbody.rows.length > LIVE_ROWS) tbody.deleteRow(-1)
}

// -- trace ------------------------------------------------------------------------------------------
async function refreshRecent() {
  const { status, data } = await api('/api/recent?limit=50')
  if (status !== 200) return
  const list = $('#recent-ids')
  list.textContent = ''
  for (const id of data.messageIds) list.append(el('option', { value: id }))
}

function requestBlock(req) {
  return el('div', {},
    el('div', { class: 'mono' }, `${req.method} ${req.url}`),
    el('pre', { class: 'headers' }, pretty(req.headers)),
    req.body !== null && req.body !== undefined ? el('pre', { class: 'body' }, pretty(req.body)) : null)
}

async function runTrace() {
  const id = $('#trace-id').value.trim()
  const out = $('#trace-result')
  const status = $('#trace-status')
  out.textContent = ''
  if (!id) return
  status.textContent = 'loading…'
  const { status: code, data } = await api(`/api/trace/${encodeURIComponent(id)}`)
  if (code !== 200) { status.textContent = data.message || `error ${code}`; return }
  status.textContent = `received ${fmtTime(data.receivedAt)} on source ${data.source}`
  const routes = el('table', { id: 'trace-routes' }, el('thead', {}, el('tr', {}, el('th', {}, 'Destination'), el('th', {}, 'Routing'), el('th', {}, 'Outcome'), el('th', {}, 'Details'))))
  const body = el('tbody')
  for (const r of data.routes) {
    const o = r.outcome || {}
    const details = r.decision === 'skipped' ? r.reason
      : [o.reason, o.status ? `HTTP ${o.status}` : null, o.retry_at ? `retry at ${fmtTime(o.retry_at)}` : null, o.attempts ? `${o.attempts} attempt(s)` : null].filter(Boolean).join('; ')
    body.append(el('tr', { 'data-destination': r.destination }, el('td', {}, r.destination), el('td', {}, r.decision),
      el('td', { class: 'outcome' }, r.decision === 'skipped' ? 'skipped' : (o.disposition || 'pending')), el('td', {}, details || '')))
  }
  routes.append(body)
  const attempts = el('div', { id: 'trace-attempts' })
  if (!data.attempts.length) attempts.append(el('p', { class: 'muted' }, 'no delivery attempt recorded yet'))
  for (const a of data.attempts) {
    attempts.append(el('div', { class: `dest attempt ${a.verdict}` },
      el('h4', {}, `${a.destination} — attempt ${a.attempt} at ${fmtTime(a.at)}`, el('span', { class: 'badge' }, a.verdict),
        a.messages_in_request > 1 ? el('span', { class: 'badge' }, `${a.messages_in_request} events in this request`) : null),
      requestBlock(a.request),
      a.response ? el('div', {}, el('b', {}, `Response ${a.response.status}`), el('pre', { class: 'response' }, a.response.body || '(empty)')) : null,
      a.error ? el('p', { class: 'err' }, a.error) : null,
      a.reason ? el('p', {}, a.reason) : null))
  }
  out.append(el('h3', {}, 'Routing and outcome per destination'), routes,
    el('h3', {}, 'Delivery attempts'), attempts,
    el('h3', {}, 'The event as delivered (enriched)'), el('pre', { id: 'trace-event' }, pretty(data.event)))
}

// -- tester -----------------------------------------------------------------------------------------
const EXAMPLES = {
  'Order Completed (with products)': {
    type: 'track', event: 'Order Completed', userId: 'user-1001', anonymousId: 'anon-5e1f0c2a',
    properties: { order_id: 'ord-42', total: 57.5, revenue: 50, shipping: 5, tax: 2.5, currency: 'EUR', coupon: 'SPRING',
      products: [{ product_id: 'sku-1', sku: 'SKU-1', name: 'Trail shoe', category: 'Shoes', price: 40, quantity: 1 },
        { product_id: 'sku-2', sku: 'SKU-2', name: 'Socks', category: 'Apparel', price: 5, quantity: 2 }] },
    context: { ip: '203.0.113.7', userAgent: 'Mozilla/5.0', page: { url: 'https://shop.example.com/checkout' } },
  },
  'Identify with traits': {
    type: 'identify', userId: 'user-1001', anonymousId: 'anon-5e1f0c2a',
    traits: { email: 'ada@example.com', name: 'Ada Lovelace', plan: 'pro', company: { name: 'Analytical Engines' }, createdAt: '2024-01-15T10:00:00Z' },
  },
  'Page view': {
    type: 'page', name: 'Pricing', anonymousId: 'anon-5e1f0c2a',
    properties: { url: 'https://example.com/pricing', path: '/pricing', title: 'Pricing', referrer: 'https://example.com/' },
  },
  'Product Viewed': {
    type: 'track', event: 'Product Viewed', anonymousId: 'anon-5e1f0c2a',
    properties: { product_id: 'sku-1', name: 'Trail shoe', price: 40, currency: 'EUR', category: 'Shoes' },
  },
  'Group': { type: 'group', userId: 'user-1001', groupId: 'acct-7', traits: { name: 'Analytical Engines', plan: 'enterprise', employees: 12 } },
  'Alias': { type: 'alias', userId: 'user-1001', previousId: 'anon-5e1f0c2a' },
}

async function runTester(send) {
  const out = $('#tester-result')
  out.textContent = ''
  let event
  try { event = JSON.parse($('#tester-input').value) } catch (e) { out.append(el('p', { class: 'err' }, `Not valid JSON: ${e.message}`)); return }
  const destination = $('#tester-destination').value || undefined
  if (send && !destination) { out.append(el('p', { class: 'err' }, 'Choose one destination to send to.')); return }
  out.append(el('p', { class: 'muted' }, send ? 'sending…' : 'running…'))
  const { status, data } = await api('/api/test-event', { method: 'POST', body: JSON.stringify({ event, destination, send: !!send }) })
  out.textContent = ''
  if (status !== 200) { out.append(el('p', { class: 'err' }, `${data.code}: ${data.message}`)); return }
  for (const ev of data.events) {
    if (!ev.valid) { out.append(el('div', { class: 'dest error' }, el('h4', {}, 'Refused at ingest'), el('p', {}, `${ev.code}: ${ev.message}`))); continue }
    for (const d of ev.destinations) {
      const card = el('div', { class: `dest ${d.decision}`, 'data-destination': d.destination },
        el('h4', {}, `${d.destination} (${d.type})`, el('span', { class: 'badge' }, d.decision === 'send' ? 'would send' : d.decision),
          d.stage ? el('span', { class: 'badge' }, d.stage) : null))
      if (d.reason) card.append(el('p', {}, d.reason))
      for (const n of d.notes || []) card.append(el('p', { class: 'muted' }, `note: ${n}`))
      for (const r of d.requests || []) card.append(requestBlock(r))
      out.append(card)
    }
    out.append(el('details', {}, el('summary', {}, 'The enriched event'), el('pre', {}, pretty(ev.event))))
  }
  for (const s of data.sent || []) {
    out.prepend(el('div', { class: `dest ${s.outcome}`, id: 'tester-sent' }, el('h4', {}, 'Sent', el('span', { class: 'badge' }, s.outcome)),
      s.response ? el('div', {}, el('b', {}, `Response ${s.response.status}`), el('pre', {}, s.response.body || '(empty)')) : null,
      s.error ? el('p', { class: 'err' }, s.error) : null, s.reason ? el('p', {}, s.reason) : null))
  }
  if (send && !(data.sent || []).length) out.prepend(el('p', { class: 'err' }, 'Nothing was sent: see the decision below.'))
}

// -- dead letters -----------------------------------------------------------------------------------
async function loadDead() {
  const dest = $('#dead-destination').value
  const { status, data } = await api(`/api/dead-letters${dest ? `?destination=${encodeURIComponent(dest)}` : ''}`)
  const tbody = $('#dead-table tbody')
  tbody.textContent = ''
  $('#dead-all').checked = false
  if (status !== 200) { $('#dead-status').textContent = data.message || `error ${status}`; return }
  $('#dead-status').textContent = `${data.total} dead letter(s)${data.total > data.dead_letters.length ? `, showing ${data.dead_letters.length}` : ''}`
  for (const r of data.dead_letters) {
    const row = el('tr', { class: 'clickable', 'data-id': r.id },
      el('td', {}, el('input', { type: 'checkbox', class: 'dead-pick', value: r.id, onclick: (e) => e.stopPropagation() })),
      el('td', {}, r.id), el('td', {}, r.destination), el('td', { class: 'mono' }, fmtTime(r.at)), el('td', {}, r.attempts),
      el('td', {}, r.status ?? '-'), el('td', { class: 'mono' }, r.message_id || ''), el('td', {}, r.reason))
    row.addEventListener('click', async () => {
      const { data: dl } = await api(`/api/dead-letters/${encodeURIComponent(r.id)}`)
      const pre = $('#dead-detail')
      pre.hidden = false
      pre.textContent = pretty(dl)
    })
    tbody.append(row)
  }
}

async function replay(body) {
  const status = $('#dead-status')
  status.textContent = 'replaying…'
  let { status: code, data } = await api('/api/dead-letters/replay', { method: 'POST', body: JSON.stringify(body) })
  if (code >= 400) { status.textContent = data.message || `error ${code}`; return }
  let job = data.job
  while (!job.finished) {
    status.textContent = `replaying… ${job.done} / ${job.total}`
    await new Promise((r) => setTimeout(r, 500))
    job = (await api(`/api/jobs/${job.id}`)).data
  }
  status.textContent = job.error ? job.error : `${job.replayed} event(s) put back on their destination's queue`
  await loadDead()
  status.textContent = job.error ? job.error : `${job.replayed} event(s) put back on their destination's queue`
}

// -- start ------------------------------------------------------------------------------------------
async function init() {
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => show(b.dataset.view))
  $('#logout').addEventListener('click', async () => { await api('/logout', { method: 'POST' }).catch(() => {}); location.reload() })
  $('#live-filters').addEventListener('submit', (e) => { e.preventDefault(); startLive() })
  $('#live-pause').addEventListener('click', () => {
    paused = !paused
    $('#live-pause').textContent = paused ? 'Resume' : 'Pause'
    $('#live-status').textContent = paused ? 'paused' : 'watching'
    if (!paused) { for (const item of pending) addLiveRow(item); pending = [] }
  })
  $('#live-clear').addEventListener('click', () => { $('#live-table tbody').textContent = '' })
  $('#trace-form').addEventListener('submit', (e) => { e.preventDefault(); runTrace() })
  $('#trace-id').addEventListener('focus', () => refreshRecent().catch(() => {}))
  const ex = $('#tester-example')
  for (const name of Object.keys(EXAMPLES)) ex.append(el('option', { value: name }, name))
  ex.addEventListener('change', () => { if (ex.value) $('#tester-input').value = JSON.stringify(EXAMPLES[ex.value], null, 2) })
  $('#tester-input').value = JSON.stringify(EXAMPLES['Order Completed (with products)'], null, 2)
  $('#tester-run').addEventListener('click', () => runTester(false))
  $('#tester-send').addEventListener('click', () => runTester(true))
  $('#dead-filters').addEventListener('submit', (e) => { e.preventDefault(); loadDead() })
  $('#dead-all').addEventListener('change', (e) => { for (const c of document.querySelectorAll('.dead-pick')) c.checked = e.target.checked })
  $('#dead-replay-selected').addEventListener('click', () => {
    const ids = [...document.querySelectorAll('.dead-pick:checked')].map((c) => c.value)
    if (!ids.length) { $('#dead-status').textContent = 'select dead letters first'; return }
    replay({ ids })
  })
  $('#dead-replay-all').addEventListener('click', () => {
    const destination = $('#dead-destination').value || undefined
    replay({ all: true, destination })
  })
  const { data } = await api('/api/info')
  info = data
  for (const d of info.destinations.filter((x) => x.enabled)) {
    $('#tester-destination').append(el('option', { value: d.name }, `${d.name} (${d.type})`))
    $('#dead-destination').append(el('option', { value: d.name }, d.name))
  }
  const view = location.hash.slice(1)
  show(views[view] ? view : 'overview')
}

document.addEventListener('DOMContentLoaded', () => { init().catch((e) => console.warn('console init failed', e)) })
