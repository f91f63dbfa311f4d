"""Suite-wide pytest hooks."""

from __future__ import annotations

from tests.helpers import nats_cluster  # noqa: F401  (the 3-node NATS cluster fixture, for every test module)
from tests.sdk_support import CHROMIUM, IN_CI


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Outside CI a missing Chromium skips the browser tests (under CI=true they fail instead, see
    tests.sdk_support.require_chromium). A skip among dozens of dots is easy to miss, so say it loudly."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if CHROMIUM in str(getattr(r, "longrepr", "")) and "not found" in str(getattr(r, "longrepr", ""))]
    if not skipped or IN_CI:
        return
    terminalreporter.write_sep("!", "BROWSER TESTS SKIPPED", red=True, bold=True)
    terminalreporter.write_line(
        f"{len(skipped)} analytics-next browser test(s) did NOT run: {CHROMIUM} is missing.", red=True, bold=True)
    terminalreporter.write_line(
        "Install it (apt-get install chromium) to run them; CI=true makes this a failure.", red=True, bold=True)
    terminalreporter.write_sep("!", red=True, bold=True)
