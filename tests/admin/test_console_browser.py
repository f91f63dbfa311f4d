"""The operator console in Debian's headless Chromium (playwright-core from tests/sdk's node_modules),
against a real server with a GA4 contract fake and a webhook receiver (issue 14, "Tests").

Signs in with the form; an event sent with the real segment-analytics-python client shows in the
live view; its trace shows the GA4 delivery with the masked request; the webhook refused it, so it
is dead-lettered, then replayed from the page and delivered; the event tester shows GA4's
``purchase`` request for an Order Completed. No console errors, no failed requests; screenshots
land in .cache/test-artifacts/console/ (ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.admin.support import ADMIN_TOKEN, SECRETS, console_server
from tests.helpers import ROOT
from tests.sdk_support import NODE_MODULES, ensure_node_modules, python_sdk, require_chromium

pytestmark = [pytest.mark.sdk, pytest.mark.browser, pytest.mark.timeout(240)]

DRIVER = os.path.join(os.path.dirname(__file__), "console_driver.js")

SEND = """
import json, sys
from segment.analytics import Client
opts = json.loads(sys.argv[1])
client = Client(opts["write_key"], host=opts["host"], sync_mode=True, max_retries=1)
client.track(user_id="browser-user-1", event="Order Completed", message_id=opts["message_id"],
             properties={"order_id": "ord-77", "revenue": 42.5, "currency": "EUR",
                         "products": [{"product_id": "p-1", "name": "Lamp", "price": 42.5, "quantity": 1}]})
client.flush()
"""


class Browser:
    def __init__(self, chromium: str) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("node") or "node", DRIVER, json.dumps({"executablePath": chromium})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "NODE_PATH": str(NODE_MODULES)})

    def do(self, op: str, **kw) -> dict:  # type: ignore[no-untyped-def]
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the browser driver died during {op} {kw}"
        answer = json.loads(line)
        assert answer["ok"], f"{op} {kw}: {answer.get('error')}"
        return answer

    def close(self) -> dict:
        try:
            return self.do("close")
        finally:
            self.proc.wait(30)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    return require_chromium()


def test_console_in_chromium(tmp_path, chromium_path):
    ensure_node_modules()
    sdk = python_sdk("2.4.0")
    # kept after the run (pytest's tmp dirs are pruned); .cache/ is ignored by git
    shots = ROOT / ".cache" / "test-artifacts" / "console"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with console_server(tmp_path) as c:
        c.hook.default = (400, {}, b'{"error": "not yet"}')
        browser = Browser(chromium_path)
        try:
            # sign in with the form
            browser.do("goto", url=c.url + "/")
            browser.do("waitText", selector="h1", text="trackrelay console")
            browser.do("screenshot", path=str(shots / "1-login.png"))
            browser.do("fill", selector="#token", value=ADMIN_TOKEN)
            browser.do("click", selector="#login")
            browser.do("waitText", selector="#summary", text="Stored events")
            # the sign-in page itself is a 401 document (every page answers 401 without the token), which
            # Chromium logs as a console error; from here on the console must log none
            signin = browser.do("resetLog")
            assert signin["pageErrors"] == [] and signin["failed"] == [], signin
            assert all("status of 401" in m["text"] for m in signin["console"] if m["type"] == "error"), signin
            cookies = browser.do("cookies")["cookies"]
            [session] = [k for k in cookies if k["name"] == "trackrelay_admin"]
            assert session["httpOnly"] and session["sameSite"] == "Strict" and ADMIN_TOKEN not in session["value"]

            # live view: an event from the real Python SDK shows up
            browser.do("click", selector='#tabs button[data-view="live"]')
            browser.do("waitText", selector="#live-status", text="watching")
            mid = f"browser-{uuid.uuid4()}"
            proc = subprocess.run([sys.executable, "-c", SEND, json.dumps(
                {"write_key": c.tr.write_key, "host": c.tr.url, "message_id": mid})],
                env={**os.environ, "PYTHONPATH": str(sdk)}, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            browser.do("waitText", selector="#live-table", text=mid)
            row = browser.do("text", selector=f'tr[data-message-id="{mid}"]')["text"]
            assert "Order Completed" in row and "browser-user-1" in row and "ga4, hook" in row
            browser.do("screenshot", path=str(shots / "2-live.png"))

            # trace: delivered to GA4 with the request masked; the webhook refused it (dead letter)
            c.wait(lambda: (t := c.trace(mid)) and {r["destination"]: r.get("outcome", {}).get("disposition")
                                                    for r in t["routes"]} == {"ga4": "delivered", "hook": "dead"},
                   what="ga4 delivered, hook dead")
            browser.do("click", selector=f'tr[data-message-id="{mid}"]')
            browser.do("waitText", selector="#trace-attempts", text="api_secret=***")
            routes = browser.do("text", selector="#trace-routes")["text"]
            assert "ga4" in routes and "delivered" in routes and "dead" in routes
            attempts = browser.do("text", selector="#trace-attempts")["text"]
            assert "/mp/collect?measurement_id=G-ABC123XYZ&api_secret=***" in attempts
            assert '"name": "purchase"' in attempts and "Response 204" in attempts
            assert '"X-Signature": "***"' in attempts and "Response 400" in attempts
            assert mid in browser.do("text", selector="#trace-event")["text"]
            browser.do("screenshot", path=str(shots / "3-trace.png"))
            assert any(e.get("transaction_id") == "ord-77" or e.get("params", {}).get("transaction_id") == "ord-77"
                       for e in c.ga4.app["accepted"]), c.ga4.app["accepted"]

            # dead letters: replay the event from the page, now that the receiver takes it
            c.hook.default = 200
            browser.do("click", selector='#tabs button[data-view="dead"]')
            browser.do("waitText", selector="#dead-table", text=mid)
            status, dead = c.json("GET", "/api/dead-letters?destination=hook")
            [dl] = [d for d in dead["dead_letters"] if d["message_id"] == mid]
            browser.do("click", selector=f'input.dead-pick[value="{dl["id"]}"]')
            browser.do("screenshot", path=str(shots / "4-dead-letters.png"))
            browser.do("click", selector="#dead-replay-selected")
            browser.do("waitText", selector="#dead-status", text="1 event(s) put back")
            c.wait(lambda: mid in c.hook.delivered_ids(), what="the replayed event at the webhook")
            c.wait(lambda: c.json("GET", "/api/dead-letters?destination=hook")[1]["total"] == 0, what="no dead letter")

            # event tester: GA4's purchase request for an Order Completed
            browser.do("click", selector='#tabs button[data-view="tester"]')
            browser.do("select", selector="#tester-example", value="Order Completed (with products)")
            browser.do("select", selector="#tester-destination", value="ga4")
            browser.do("click", selector="#tester-run")
            browser.do("waitText", selector="#tester-result", text="purchase")
            result = browser.do("text", selector="#tester-result")["text"]
            assert "would send" in result and "api_secret=***" in result and '"transaction_id": "ord-42"' in result
            browser.do("screenshot", path=str(shots / "5-tester.png"))

            browser.do("click", selector='#tabs button[data-view="overview"]')
            browser.do("waitText", selector="#dest-table", text="ga4")
            browser.do("screenshot", path=str(shots / "6-overview.png"))
            page = browser.do("html")["text"]
            for label, secret in SECRETS.items():
                assert secret not in page, f"the {label} is on the page"
        finally:
            report = browser.close()
    print(f"screenshots: {shots}")
    assert report["pageErrors"] == [], report["pageErrors"]
    assert [m for m in report["console"] if m["type"] == "error"] == [], report["console"]
    assert report["failed"] == [], report["failed"]
    assert len(list(shots.glob("*.png"))) == 6
