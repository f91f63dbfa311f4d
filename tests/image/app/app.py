"""A stand-in for the user's application in the sidecar pod (tests/image/test_image.py).

It serves GET /send?id=MESSAGE_ID on port 8080: posts one track call to trackrelay at
$TRACKRELAY_URL (the pod's loopback, http://127.0.0.1:8088) with $WRITE_KEY and answers with
trackrelay's status and body as JSON. Standard library only."""

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRACKRELAY = os.environ.get("TRACKRELAY_URL", "http://127.0.0.1:8088")
AUTH = "Basic " + base64.b64encode(f"{os.environ.get('WRITE_KEY', '')}:".encode()).decode()


def track(message_id: str) -> tuple[int, object]:
    body = json.dumps({"userId": "app-user", "event": "App Event", "messageId": message_id}).encode()
    req = urllib.request.Request(TRACKRELAY + "/v1/track", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": AUTH})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, repr(e)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/send":
            message_id = urllib.parse.parse_qs(url.query).get("id", ["app-1"])[0]
            status, body = track(message_id)
            payload = json.dumps({"trackrelay_status": status, "trackrelay_body": body}).encode()
        elif url.path == "/healthz":
            payload = b'{"status":"ok"}'
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
