"""Container health probe: ``trackrelay-probe [/healthz|/readyz]`` exits 0 when trackrelay answers
200 on that path, 1 otherwise. Used by the image's HEALTHCHECK and by exec probes in Kubernetes
(a sidecar listens on 127.0.0.1 only, where an httpGet probe from the kubelet cannot reach it).
Port from $TRACKRELAY_PORT (default 8088); standard library only."""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{os.environ.get('TRACKRELAY_PORT') or '8088'}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
