"""`make test` without Chromium: loud outside CI, a failure under CI=true (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def run_browser_test(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["TRACKRELAY_CHROMIUM"] = "/nonexistent/chromium"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests/test_sdk_browser.py",
         "-k", "standard and 1.84"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_missing_chromium_is_announced_in_the_summary(ci):
    out = run_browser_test(ci)
    assert out.returncode == 0, out.stdout
    assert "BROWSER TESTS SKIPPED" in out.stdout
    assert "did NOT run: /nonexistent/chromium is missing" in out.stdout


def test_under_ci_a_missing_chromium_fails():
    out = run_browser_test("true")
    assert out.returncode == 1, out.stdout
    assert "CI=true, so the browser test may not be skipped" in out.stdout
    assert "BROWSER TESTS SKIPPED" not in out.stdout
