"""The browser tests' one headless Chromium per module, and a lab tab on the module's `server` per test."""

from __future__ import annotations

import pytest

from support import CHROMIUM, CHROMIUM_ARGS, SERVER_KEY, Lab, require_browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture
def lab(browser, server, tmp_path):
    tab = Lab(browser, server, tmp_path, SERVER_KEY)
    yield tab
    tab.page.close()
