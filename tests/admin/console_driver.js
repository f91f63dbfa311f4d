// Drive Debian's headless Chromium (playwright-core, no bundled browser) step by step for
// tests/admin/test_console_browser.py: one JSON command per stdin line, one JSON answer per stdout line.
//
//   node tests/admin/console_driver.js '{"executablePath": "/usr/bin/chromium"}'
//   > {"op": "goto", "url": "http://127.0.0.1:P/"}                  < {"ok": true}
//   > {"op": "fill", "selector": "#token", "value": "..."}
//   > {"op": "click", "selector": "#login"}
//   > {"op": "select", "selector": "#x", "value": "v"}
//   > {"op": "waitText", "selector": "#live-table", "text": "abc", "timeoutMs": 15000}
//   > {"op": "text", "selector": "#trace-result"}                   < {"ok": true, "text": "..."}
//   > {"op": "screenshot", "path": "/tmp/x.png"}
//   > {"op": "resetLog"}                                          (forget console messages so far)
//   > {"op": "cookies"}                                            < {"ok": true, "cookies": [...]}
//   > {"op": "close"}                                              < {"ok": true, "console": [...], "pageErrors": [...], "failed": [...]}
// A failing step answers {"ok": false, "error": "..."} and the driver keeps going.
'use strict'

const fs = require('fs')
const os = require('os')
const path = require('path')
const readline = require('readline')
const { chromium } = require('playwright-core')

const opts = JSON.parse(process.argv[2] || '{}')

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'trackrelay-console-'))
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opts.executablePath || '/usr/bin/chromium',
    headless: true,
    timeout: 30000,
    viewport: { width: 1400, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  })
  const page = context.pages()[0] || (await context.newPage())
  const seen = { console: [], pageErrors: [], failed: [] }
  page.on('console', (msg) => seen.console.push({ type: msg.type(), text: msg.text() }))
  page.on('pageerror', (err) => seen.pageErrors.push(String((err && err.stack) || err)))
  page.on('requestfailed', (req) => {
    const err = (req.failure() || {}).errorText
    // EventSource streams are aborted when the page navigates or closes them: not a failure
    if (!(req.url().includes('/api/live') && err === 'net::ERR_ABORTED')) seen.failed.push({ url: req.url(), err })
  })
  const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
  const rl = readline.createInterface({ input: process.stdin })
  for await (const line of rl) {
    if (!line.trim()) continue
    const cmd = JSON.parse(line)
    const timeout = cmd.timeoutMs || 15000
    try {
      if (cmd.op === 'goto') {
        await page.goto(cmd.url, { waitUntil: 'load', timeout })
        say({ ok: true })
      } else if (cmd.op === 'fill') {
        await page.fill(cmd.selector, cmd.value, { timeout })
        say({ ok: true })
      } else if (cmd.op === 'click') {
        await page.click(cmd.selector, { timeout })
        say({ ok: true })
      } else if (cmd.op === 'select') {
        await page.selectOption(cmd.selector, cmd.value, { timeout })
        say({ ok: true })
      } else if (cmd.op === 'waitText') {
        await page.waitForFunction(
          ([sel, text]) => { const n = document.querySelector(sel); return !!n && n.textContent.includes(text) },
          [cmd.selector, cmd.text], { timeout })
        say({ ok: true })
      } else if (cmd.op === 'text') {
        await page.waitForSelector(cmd.selector, { timeout, state: 'attached' })
        say({ ok: true, text: await page.textContent(cmd.selector) })
      } else if (cmd.op === 'html') {
        say({ ok: true, text: await page.content() })
      } else if (cmd.op === 'screenshot') {
        await page.screenshot({ path: cmd.path, fullPage: true })
        say({ ok: true })
      } else if (cmd.op === 'resetLog') {
        const before = { ...seen }
        for (const k of Object.keys(seen)) seen[k] = []
        say({ ok: true, ...before })
      } else if (cmd.op === 'cookies') {
        say({ ok: true, cookies: await context.cookies() })
      } else if (cmd.op === 'close') {
        await context.close().catch(() => {})
        fs.rmSync(userDataDir, { recursive: true, force: true })
        say({ ok: true, ...seen })
        process.exit(0)
      } else {
        say({ ok: false, error: `unknown op ${cmd.op}` })
      }
    } catch (e) {
      say({ ok: false, error: String((e && e.message) || e) })
    }
  }
  await context.close().catch(() => {})
  fs.rmSync(userDataDir, { recursive: true, force: true })
}

main().catch((e) => {
  process.stderr.write(`console_driver failed: ${e && e.stack ? e.stack : e}\n`)
  process.exit(2)
})
