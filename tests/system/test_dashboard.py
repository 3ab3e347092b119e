"""The web dashboard in a real browser: Debian's chromium driven by Playwright.

One server with ``IOCMNG_API_TOKEN`` set. The browser opens ``/`` and, without
ever reloading the page: sees a wrong token refused with one message that
changes nothing; sees a bad add's problem detail next to its field and a
refused plugin's validation report step by step; adds a task and a job from
``file://`` git repos made here and watches them reach running/idle over the
SSE stream (through the reload); changes an input on the plugin page and
reads the new value over Channel Access; toggles ENABLE; runs the job and
sees its result; removes the task. With JavaScript off, ``/`` is still a
readable list. Screenshots for the user guide go to docs/images/.

Skips (saying why) where chromium or Playwright is missing. Playwright's own
browser download is never used: ``.ci/run`` installs Debian's chromium.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioca import caget
from conftest import EXAMPLES, REPO, wait_for

from .conftest import Server, call, make_repo

pytestmark = pytest.mark.timeout(240)

CHROMIUM = os.environ.get("IOCMNG_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "dashboard-secret-token"
# The user guide's screenshots are refreshed only on request
# (IOCMNG_UPDATE_SCREENSHOTS=1); otherwise they go to a temp directory, so a
# test run never changes tracked files.
IMAGES = (
    REPO / "docs" / "images"
    if os.environ.get("IOCMNG_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="iocmng-shots-"))
)

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None  # type: ignore[assignment]

if async_playwright is None:
    pytestmark = [
        pytestmark,
        pytest.mark.skip(reason="playwright is not installed (pip install playwright)"),
    ]
elif not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytestmark = [
        pytestmark,
        pytest.mark.skip(
            reason=f"no chromium at {CHROMIUM} (apt-get install chromium, or set IOCMNG_CHROMIUM)"
        ),
    ]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


def rest(srv: Server, path: str) -> Any:
    r = srv.call("GET", path, timeout=10)
    assert r.status == 200, r.text
    return r.body


def fetch(url: str) -> bytes:
    r = call("GET", url, timeout=10)
    assert r.status == 200, r.text
    return r.content


def plugin_names(srv: Server) -> set[str]:
    return {p["name"] for p in rest(srv, "/plugins")["plugins"]}


async def add_through_form(
    page: Any, coll: str, name: str, git_url: str, params: str = "{}", path: str = ""
) -> None:
    form = page.locator("#add-form")
    await form.locator("select[name=coll]").select_option(coll)
    await form.locator("input[name=name]").fill(name)
    await form.locator("input[name=git_url]").fill(git_url)
    await form.locator("input[name=branch]").fill("main")
    await form.locator("input[name=path]").fill(path)
    await form.locator("textarea[name=parameters]").fill(params)
    await form.locator("button[type=submit]").click()


@pytest.mark.server(token=TOKEN, start=False)
async def test_dashboard(server: Server, browser: Any, tmp_path: Path) -> None:
    srv = server
    srv.start()
    monitor = make_repo(tmp_path / "git" / "monitor", {".": EXAMPLES / "sync_monitor"})
    diag = make_repo(tmp_path / "git" / "diag", {"jobs/diag": EXAMPLES / "diagnostics_job"})
    broken = make_repo(
        tmp_path / "git" / "broken",
        {
            "config.yaml": "parameters: {}\npvs:\n  outputs:\n    X: {type: float, colour: red}\n",
            "plugin.py": "from iocmng import TaskBase\n",
        },
    )

    ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: d.accept())
    await page.goto(f"http://127.0.0.1:{srv.http_port}/")
    await expect(page.locator("#plugins")).to_contain_text("no plugins yet")
    await expect(page.locator("#live")).to_have_class("on", timeout=10_000)
    # A marker that a page reload would erase: every check below keeps it.
    await page.evaluate("window.__noReload = true")
    await expect(page.locator("#token-state")).to_have_text("read-only without a token")

    # -- without a token, an add is refused and says so -----------------------------------------
    await add_through_form(page, "tasks", "mon", monitor)
    await expect(page.locator("#message")).to_contain_text("needs the API token")
    # -- a wrong token: one clear message, nothing changed ---------------------------------------
    await page.fill("#token", "wrong-token")
    await page.click("#token-form button[type=submit]")
    message = page.locator("#message")
    await expect(message).to_contain_text("token was refused")
    await expect(page.locator(".message:visible")).to_have_count(1)
    assert await page.evaluate("sessionStorage.getItem('iocmng-token')") is None
    assert plugin_names(srv) == set()

    # -- the right token ---------------------------------------------------------------------------
    await page.fill("#token", TOKEN)
    await page.click("#token-form button[type=submit]")
    await expect(message).to_contain_text("Token accepted")
    await expect(page.locator("#token-state")).to_have_text("token set")

    # -- bad adds: the detail next to the field, the report step by step -------------------------
    await add_through_form(page, "tasks", "Bad Name!", monitor)
    await expect(page.locator('.field-error[data-for="name"]')).to_contain_text(
        "not a valid plugin name"
    )
    await add_through_form(page, "tasks", "mon", "ftp://example.invalid/x.git")
    await expect(page.locator('.field-error[data-for="git_url"]')).to_contain_text("file://")
    await expect(page.locator('.field-error[data-for="name"]')).to_be_empty()
    await add_through_form(page, "tasks", "broken", broken)
    steps = page.locator("#steps li")
    await expect(steps.last).to_have_class("bad", timeout=60_000)
    await expect(steps.last).to_contain_text("colour")
    await expect(steps.first).to_have_class("ok")
    assert plugin_names(srv) == set()

    # -- good adds: rows appear, the reload banner shows, then running over SSE -----------------
    await add_through_form(page, "tasks", "mon", monitor, '{"interval": 0.2}')
    row = page.locator('#plugins tr[data-name="mon"]')
    await expect(row).to_be_visible(timeout=60_000)
    await expect(page.locator("#steps li.bad")).to_have_count(0)
    await add_through_form(page, "jobs", "diag", diag, path="jobs/diag")
    await expect(page.locator('#plugins tr[data-name="diag"]')).to_be_visible(timeout=60_000)
    await expect(row.locator(".state")).to_have_text("running", timeout=60_000)
    await expect(page.locator('#plugins tr[data-name="diag"] .state')).to_have_text(
        "idle", timeout=60_000
    )
    await expect(page.locator("#banner")).to_be_hidden(timeout=30_000)
    await expect(row).to_contain_text(monitor)
    assert await page.evaluate("window.__noReload") is True
    await expect(page.locator("#generation")).to_have_text(str(rest(srv, "/health")["generation"]))
    IMAGES.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(IMAGES / "dashboard.png"), full_page=True)

    # -- the plugin page: change an input, read it over CA; ENABLE --------------------------------
    await page.goto(f"http://127.0.0.1:{srv.http_port}/ui/plugins/mon")
    await page.evaluate("window.__noReload = true")
    setpoint = page.locator('#pvs tr[data-pv="SETPOINT"]')
    await setpoint.locator("input[name=value]").fill("42.5")
    await setpoint.locator("button").click()
    await expect(setpoint.locator("td.value")).to_have_text("42.5 %")
    assert await caget(srv.pv("mon", "SETPOINT"), timeout=10) == 42.5
    await wait_for(
        lambda: rest(srv, "/tasks/mon/pvs")["pvs"][-1]["value"] == "SETPOINT=42.5",
        timeout=10,
        what="on_input to see the write",
    )
    await setpoint.locator("input[name=value]").fill("not a number")
    await setpoint.locator("button").click()
    await expect(setpoint.locator(".field-error")).to_contain_text("is not a number")
    await page.click("#enable-btn")
    await expect(page.locator('#info dd[data-key="state"]')).to_have_text("paused")
    assert await caget(srv.pv("mon", "ENABLE"), timeout=10) == 0
    await page.click("#enable-btn")
    await expect(page.locator('#info dd[data-key="state"]')).to_have_text("running")
    await expect(page.locator('#pvs tr[data-pv="CYCLE_COUNT"] td.value')).not_to_have_text("0")
    await page.screenshot(path=str(IMAGES / "plugin.png"), full_page=True)

    # -- the job: run with parameters, see the result -----------------------------------------------
    await page.goto(f"http://127.0.0.1:{srv.http_port}/ui/plugins/diag")
    await page.fill("#run-form textarea[name=parameters]", '{"fail": true}')
    await page.click("#run-form button")
    result = page.locator("#job-result")
    await expect(result).to_contain_text("FAILED")
    await page.fill("#run-form textarea[name=parameters]", "{}")
    await page.click("#run-form button")
    await expect(result).to_contain_text("SUCCESS")
    await expect(result).to_contain_text("message:")

    # -- remove the task from its page; the list drops it -------------------------------------------
    await page.goto(f"http://127.0.0.1:{srv.http_port}/ui/plugins/mon")
    await page.click("#remove-btn")
    await expect(page.locator("#message")).to_contain_text("removed")
    await page.goto(f"http://127.0.0.1:{srv.http_port}/")
    await expect(page.locator('#plugins tr[data-name="diag"]')).to_be_visible()
    await expect(page.locator('#plugins tr[data-name="mon"]')).to_have_count(0)
    await wait_for(lambda: plugin_names(srv) == {"diag"}, timeout=30, what="mon removed")
    # after the reload, plugins start while HTTP already answers: wait for idle
    await wait_for(
        lambda: (
            rest(srv, "/health")["pending_generation"] is None
            and rest(srv, "/jobs/diag")["state"] == "idle"
        ),
        timeout=30,
        what="reload done, diag idle",
    )
    assert errors == [], errors

    # -- no JavaScript: a readable read-only list ---------------------------------------------------
    nojs = await browser.new_context(java_script_enabled=False)
    plain = await nojs.new_page()
    await plain.goto(f"http://127.0.0.1:{srv.http_port}/")
    text = await plain.locator("#plugins").inner_text()
    assert "diag" in text and "job" in text and "idle" in text, text
    assert not await plain.locator("#add-form").is_visible()
    await plain.goto(f"http://127.0.0.1:{srv.http_port}/ui/plugins/diag")
    assert "DIAG:STATUS" in await plain.locator("#pvs").inner_text()
    await nojs.close()
    await ctx.close()

    # -- light: the first paint (page, script, style) is well under 100 KB ----------------------------
    base = f"http://127.0.0.1:{srv.http_port}"
    sizes = {
        path: len(fetch(base + path))
        for path in ("/", "/ui/static/dashboard.js", "/ui/static/dashboard.css")
    }
    assert sum(sizes.values()) < 100_000, sizes


@pytest.mark.server(env={"IOCMNG_APPLY": "manual"})
async def test_dashboard_applies_pending_changes(server: Server, browser: Any) -> None:
    """IOCMNG_APPLY=manual: the page lists the pending change and its Apply button reloads."""
    srv = server
    gen = rest(srv, "/health")["generation"]
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"http://127.0.0.1:{srv.http_port}/")
    await expect(page.locator("#live")).to_have_class("on", timeout=10_000)
    await expect(page.locator("#apply-banner")).to_be_hidden()

    r = srv.call("POST", "/tasks", {"name": "mon", "local_path": str(EXAMPLES / "sync_monitor")})
    assert r.status == 201 and r.body["apply"] == "manual", r.text
    banner = page.locator("#apply-banner")
    await expect(banner).to_be_visible(timeout=10_000)  # from the SSE `added` event
    await expect(banner).to_contain_text("add mon")
    await expect(page.locator("#banner")).to_be_hidden()
    assert rest(srv, "/health")["generation"] == gen  # nothing applied yet

    await page.locator("#apply-btn").click()
    await expect(page.locator("#message")).to_contain_text("applying 1 change(s)")
    await expect(page.locator("#generation")).to_have_text(str(gen + 1), timeout=30_000)
    await expect(banner).to_be_hidden()
    await expect(page.locator('#plugins tr[data-name="mon"]')).to_contain_text(
        "running", timeout=30_000
    )
    assert errors == []
