"""Playwright's ``expect``, for the browser tests: a dev extra, so missing only where setup did not run. Importing
this skips the importing test module then (and fails it under CI, where setup always runs)."""

from __future__ import annotations

import pytest

from tests.conftest import CI

try:
    from playwright.sync_api import expect
except ImportError as exc:
    if CI:
        raise
    pytest.skip(f"playwright is not installed ({exc})", allow_module_level=True)

__all__ = ["expect"]
