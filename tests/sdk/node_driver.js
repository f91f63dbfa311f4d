// Drive the real @segment/analytics-node client (unchanged) against a trackrelay server.
//
//   node tests/sdk/node_driver.js '{"package": "analytics-node-3.1", "host": "http://127.0.0.1:PORT", "writeKey": "..."}'
//
// Options (JSON in argv[2]): package (npm alias from tests/sdk/package.json), host, writeKey, run (label put
// into every event), flushAt (default 3), clockSkewMs (simulate a device clock that is off: the global Date
// is shifted, so the SDK's event "timestamp" and request "sentAt" both carry the skew; the SDK is untouched).
//
// Prints one JSON object on stdout: {version, sent: [events as the SDK delivered them (ctx.event)],
// resent: [messageIds sent again in a later request], errors: [...], requests: [{url, method, headers, events}]}.
'use strict'

const opts = JSON.parse(process.argv[2])
const skew = Number(opts.clockSkewMs || 0)
if (skew) {
  const RealDate = Date
  class SkewedDate extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(RealDate.now() + skew)
      else super(...args)
    }
    static now() {
      return RealDate.now() + skew
    }
  }
  globalThis.Date = SkewedDate
}

const { Analytics } = require(opts.package)
const version = require(opts.package + '/package.json').version

const hardTimeout = setTimeout(() => {
  process.stderr.write('node_driver: hard timeout\n')
  process.exit(3)
}, Number(opts.hardTimeoutMs || 30000))

async function main() {
  const analytics = new Analytics({
    writeKey: opts.writeKey,
    host: opts.host,
    flushAt: Number(opts.flushAt || 3),
    flushInterval: 300,
    maxRetries: 2,
    httpRequestTimeout: 10000,
  })
  const errors = []
  const requests = []
  const sent = []
  const pending = []
  analytics.on('error', (err) => errors.push(`error event: ${err && (err.code || '')} ${err && err.reason ? err.reason : err}`))
  analytics.on('http_request', (req) => {
    let events = null
    try {
      events = JSON.parse(req.body).batch.map((e) => e.messageId)
    } catch (e) {
      events = String(e)
    }
    requests.push({ url: req.url, method: req.method, headers: req.headers, events })
  })

  const run = opts.run || 'node'
  const call = (method, params) =>
    pending.push(
      new Promise((resolve) => {
        analytics[method](params, (err, ctx) => {
          if (err) errors.push(`${method} callback error: ${err && (err.reason || err.message || err)}`)
          if (ctx) sent.push(JSON.parse(JSON.stringify(ctx.event)))
          resolve()
        })
      })
    )

  const ctx = { groupId: 'g1', run }
  call('identify', { userId: 'u1', traits: { email: 'u1@example.com', name: 'Ursula One' }, context: ctx })
  call('track', {
    userId: 'u1', event: 'Order Completed', properties: { order_id: 'o1', revenue: 10.5, currency: 'USD' },
    context: ctx, integrations: { All: false, Mixpanel: true },
  })
  call('page', { userId: 'u1', category: 'Docs', name: 'Home', properties: { url: 'https://example.com/docs' }, context: ctx })
  call('screen', { userId: 'u1', name: 'Settings', properties: { variant: 'dark' }, context: ctx })
  call('group', { userId: 'u1', groupId: 'g1', traits: { name: 'Acme', employees: 42 }, context: ctx })
  call('alias', { userId: 'u1', previousId: 'anon-previous-1', context: ctx })
  for (let i = 0; i < 5; i++) {
    call('track', { anonymousId: `anon-${i}`, event: 'Item Viewed', properties: { i, run }, context: { run } })
  }
  call('track', { userId: 'u2', event: 'Backfilled', timestamp: new Date('2026-01-02T03:04:05.678Z'), context: { run } })
  call('track', { userId: 'u2', event: 'Ip Given', context: { run, ip: '203.0.113.9' } })

  const within = async (ms, p) => {
    let timer
    await Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))])
    clearTimeout(timer) // a pending timer would keep node alive after the work is done
  }
  await within(15000, Promise.all(pending))
  if (sent.length !== pending.length) errors.push(`only ${sent.length}/${pending.length} callbacks fired`)

  // A client resending events whose 200 it never saw: the same messages (same messageId and timestamp)
  // again, in a later request. trackrelay must deduplicate them on (source, messageId).
  const resent = []
  const resendDone = []
  // (sent is in callback order: pick the tracks by name)
  const pick = (name) => sent.find((e) => e.type === 'track' && e.event === name)
  for (const ev of [pick('Order Completed'), pick('Item Viewed')].filter(Boolean)) {
    resent.push(ev.messageId)
    resendDone.push(
      new Promise((resolve) => {
        analytics.track(
          { userId: ev.userId, anonymousId: ev.anonymousId, event: ev.event, properties: ev.properties,
            context: ev.context, integrations: ev.integrations, timestamp: new Date(ev.timestamp),
            messageId: ev.messageId },
          (err) => {
            if (err) errors.push(`resend callback error: ${err && (err.reason || err.message || err)}`)
            resolve()
          }
        )
      })
    )
  }
  await analytics.closeAndFlush({ timeout: 20000 })
  await within(5000, Promise.all(resendDone))
  process.stdout.write(JSON.stringify({ version, sent, resent, errors, requests }) + '\n')
}

main()
  .then(() => {
    clearTimeout(hardTimeout)
  })
  .catch((e) => {
    process.stderr.write(`node_driver failed: ${e && e.stack ? e.stack : e}\n`)
    process.exit(2)
  })
