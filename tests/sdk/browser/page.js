// Sends one of each Segment call plus a few tracks through analytics-next, then publishes
// window.__result = {ok, events: [ctx.event...]} (or {ok: false, error}) for the driver to read.
;(async function () {
  const cfg = window.__CFG
  try {
    const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(
      { writeKey: cfg.writeKey, cdnURL: cfg.trackrelay },
      { integrations: { 'Segment.io': cfg.segmentio } }
    )
    const calls = [
      analytics.identify('u1', { email: 'u1@example.com', name: 'Ursula One' }),
      analytics.track('Order Completed', { order_id: 'o1', revenue: 10.5, currency: 'USD', run: cfg.run },
        { integrations: { All: false, Mixpanel: true }, context: { groupId: 'g1' } }),
      analytics.page('Docs', 'Home', { run: cfg.run }),
      analytics.screen('Mobile', 'Settings', { variant: 'dark' }),
      analytics.group('g1', { name: 'Acme', employees: 42 }),
      analytics.alias('u1', 'anon-previous-1'),
    ]
    for (let i = 0; i < 4; i++) calls.push(analytics.track('Item Viewed', { i, run: cfg.run }))
    const ctxs = await Promise.all(calls)
    window.__result = { ok: true, events: ctxs.map((c) => JSON.parse(JSON.stringify(c.event))) }
  } catch (e) {
    window.__result = { ok: false, error: String((e && e.stack) || e) }
  }
})()
