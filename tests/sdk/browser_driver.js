// Load tests/sdk/browser/page.html in Debian's headless Chromium (playwright-core, no bundled browser)
// and report everything the page did on the network.
//
//   node tests/sdk/browser_driver.js '{"pageUrl": "http://127.0.0.1:P/", "trackrelay": "http://127.0.0.1:Q",
//                                       "executablePath": "/usr/bin/chromium", "timeoutMs": 30000}'
//
// It waits for window.__result (set by page.js once every call resolved), then until every messageId the
// page produced has been seen in a trackrelay response with status 200 (or the timeout), then a short grace
// period so late retries/duplicates would be seen too. Prints one JSON object:
//   {result, urls: [every URL the page requested], posts: [{method, url, path, status, requestHeaders, responseHeaders, messageIds}],
//    gets: [...same...], failed: [{method, url, errorText}], console: [{type, text}], pageErrors: [...]}
'use strict'

const fs = require('fs')
const os = require('os')
const path = require('path')
const { chromium } = require('playwright-core')

const opts = JSON.parse(process.argv[2])
const timeoutMs = Number(opts.timeoutMs || 30000)
const graceMs = Number(opts.graceMs || 1500)

const hardTimeout = setTimeout(() => {
  process.stderr.write('browser_driver: hard timeout\n')
  process.exit(3)
}, timeoutMs + 30000)

function messageIdsOf(postData) {
  if (!postData) return []
  try {
    const body = JSON.parse(postData)
    if (Array.isArray(body.batch)) return body.batch.map((e) => e.messageId)
    return body.messageId ? [body.messageId] : []
  } catch (e) {
    return [`<unparseable body: ${String(e)}>`]
  }
}

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'trackrelay-chromium-'))
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opts.executablePath || '/usr/bin/chromium',
    headless: true,
    timeout: 30000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // e.g. --ignore-certificate-errors-spki-list=<pin>: trust the test's own certificate, nothing else
      ...(opts.extraArgs || []),
    ],
  })
  const report = { result: null, urls: [], posts: [], gets: [], failed: [], console: [], pageErrors: [] }
  const delivered = new Set()
  const pendingRecords = []
  try {
    const page = context.pages()[0] || (await context.newPage())
    page.on('request', (req) => report.urls.push(req.url()))
    page.on('console', (msg) => report.console.push({ type: msg.type(), text: msg.text() }))
    page.on('pageerror', (err) => report.pageErrors.push(String((err && err.stack) || err)))
    page.on('requestfailed', (req) =>
      report.failed.push({ method: req.method(), url: req.url(), errorText: (req.failure() || {}).errorText })
    )
    page.on('response', (resp) => {
      const req = resp.request()
      if (!req.url().startsWith(opts.trackrelay)) return
      pendingRecords.push(
        (async () => {
          const rec = {
            method: req.method(),
            url: req.url(),
            path: new URL(req.url()).pathname,
            status: resp.status(),
            requestHeaders: await req.allHeaders().catch(() => ({})),
            responseHeaders: await resp.allHeaders().catch(() => ({})),
            messageIds: req.method() === 'POST' ? messageIdsOf(req.postData()) : [],
          }
          if (rec.method === 'POST') {
            report.posts.push(rec)
            if (rec.status === 200) rec.messageIds.forEach((id) => delivered.add(id))
          } else {
            report.gets.push(rec)
          }
        })()
      )
    })

    await page.goto(opts.pageUrl, { waitUntil: 'load', timeout: timeoutMs })
    const deadline = Date.now() + timeoutMs
    await page.waitForFunction(() => window.__result !== undefined, null, { timeout: timeoutMs })
    report.result = await page.evaluate(() => window.__result)
    const expected = report.result && report.result.ok ? report.result.events.map((e) => e.messageId) : []
    while (Date.now() < deadline && !expected.every((id) => delivered.has(id))) {
      await page.waitForTimeout(50)
    }
    await page.waitForTimeout(graceMs)
    await Promise.all(pendingRecords)
  } finally {
    await context.close().catch(() => {})
    fs.rmSync(userDataDir, { recursive: true, force: true })
  }
  process.stdout.write(JSON.stringify(report) + '\n')
}

main()
  .then(() => clearTimeout(hardTimeout))
  .catch((e) => {
    process.stderr.write(`browser_driver failed: ${e && e.stack ? e.stack : e}\n`)
    process.exit(2)
  })
