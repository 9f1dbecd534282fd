"""Answers in the page (headless Chromium, a real in-process server): Stop, Markdown with
its sanitizer and Copy buttons, and Download.

Answers with chosen text come from `EchoAgent` with an empty prefix (the session's
`settings`), so an answer is exactly the message sent; answers held mid-stream come
from `GateAgent`, which waits at a gate the test opens.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from jupyter_chatbridge.protocol.export import render

from ..agents import BurstAgent, GateAgent
from ..support import Api
from .conftest import Browser

expect = pytest.importorskip("playwright.async_api").expect


async def _debug(page: Any) -> dict[str, Any]:
    return await page.evaluate("chatbridge.debug()")  # type: ignore[no-any-return]


async def _open(browser: Browser, api: Api, session_id: str, **settings: Any) -> Any:
    await api.ok("POST", "sessions", body={"sessionId": session_id, "settings": settings})
    page = await browser.open(fragment=f"session={session_id}")
    await expect(page.locator("#conn-status")).to_have_attribute("data-state", "connected")
    await page.wait_for_function("chatbridge.liveState && chatbridge.liveState.state === 'live'")
    return page


async def _say(page: Any, text: str) -> None:
    await page.evaluate("(text) => chatbridge.send(text)", text)


def _stop_requests(page: Any) -> list[str]:
    """Records the REST Stop calls the page makes (the WebSocket's are frames)."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.url.endswith("/stop") else None)
    return seen


def _stop_frames(browser: Browser, session_id: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []

    def sent(payload: Any) -> None:
        frame = json.loads(payload)
        if frame.get("type") == "stop":
            frames.append(frame)

    for socket in browser.sockets_to(session_id):
        socket.on("framesent", sent)
    return frames


# -- Stop -----------------------------------------------------------------------------------


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_stop_ends_the_answer_stopped_with_its_text_and_the_queued_message_is_answered(
    browser: Browser, api: Api, gate: asyncio.Event
) -> None:
    page = await _open(browser, api, "s1")
    rest_stops = _stop_requests(page)
    frames = _stop_frames(browser, "s1")
    stop = page.locator("#stop")
    await expect(stop).to_be_hidden()  # nothing streams yet

    await _say(page, "first")
    await _say(page, "second")  # queued behind the first answer
    first = page.locator(".msg.assistant").nth(0)
    await expect(first.locator(".body")).to_have_text("working")
    await expect(stop).to_be_visible()
    await expect(stop).to_be_enabled()
    await browser.shot(page, "answers-01-streaming-with-stop")

    await stop.click()
    await expect(first).to_have_attribute("data-ended", "stopped")
    await expect(first.locator(".answer-note")).to_have_text("stopped")
    await expect(first.locator(".body")).to_have_text("working")  # the partial text stays
    # The socket was open: the Stop went as a frame naming the answer, not over REST.
    assert frames == [{"type": "stop", "messageId": "m1"}]
    assert rest_stops == []

    # The next message is still answered; its answer streams, with Stop offered again.
    second = page.locator(".msg.assistant").nth(1)
    await expect(second.locator(".body")).to_have_text("working")
    await expect(stop).to_be_visible()
    await expect(stop).to_have_text("Stop")
    # A repeated Stop of the first answer is harmless: the server says it already ended,
    # and the answer streaming now goes on.
    assert (await _debug(page))["stops"] == {"m1": {"state": "stopped", "error": None}}
    await page.evaluate("chatbridge.actions.stop('m1')")
    assert frames[-1] == {"type": "stop", "messageId": "m1"} and len(frames) == 2
    assert (await _debug(page))["stops"] == {}  # answered "already_ended"
    await expect(second).to_have_attribute("data-done", "false")
    await expect(second.locator(".answer-note")).to_be_hidden()
    await browser.shot(page, "answers-02-stopped-next-streams")

    gate.set()
    await expect(second.locator(".body")).to_have_text("working done")
    await expect(second).to_have_attribute("data-ended", "complete")
    await expect(second.locator(".answer-note")).to_be_hidden()
    await expect(stop).to_be_hidden()
    await expect(page.locator("#thinking")).to_be_hidden()
    assert len(GateAgent.runs) == 2
    await browser.shot(page, "answers-03-second-answered")


@pytest.mark.chatbridge(agent_class=GateAgent)
async def test_stop_goes_over_rest_without_the_socket_and_a_failed_stop_is_shown_by_the_answer(
    browser: Browser, api: Api, gate: asyncio.Event
) -> None:
    page = await _open(browser, api, "s1")
    rest_stops = _stop_requests(page)
    await _say(page, "first")
    answer = page.locator(".msg.assistant")
    await expect(answer.locator(".body")).to_have_text("working")
    await page.evaluate("chatbridge.live.close()")  # no socket: Stop must use REST

    async def refuse(route: Any) -> None:
        body = {"error": "the session store cannot commit", "code": "busy"}
        await route.fulfill(status=503, content_type="application/json", body=json.dumps(body))

    await browser.context.route("**/chatbridge/api/sessions/s1/stop", refuse)
    await page.click("#stop")
    note = answer.locator(".answer-note")
    await expect(note).to_have_text("could not stop: the session store cannot commit")
    await expect(note).to_have_attribute("data-kind", "stop-failed")
    await expect(page.locator("#stop")).to_be_enabled()  # it may be tried again
    await expect(answer).to_have_attribute("data-done", "false")
    await browser.shot(page, "answers-04-stop-failed")

    await browser.context.unroute("**/chatbridge/api/sessions/s1/stop")
    await page.click("#stop")
    await expect(answer).to_have_attribute("data-ended", "stopped")
    await expect(note).to_have_text("stopped")
    await expect(page.locator("#stop")).to_be_hidden()
    assert len(rest_stops) == 2 and all(url.endswith("/sessions/s1/stop") for url in rest_stops)


# -- Markdown and its sanitizer -------------------------------------------------------------

PAYLOADS = [
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss = 'img'\">",
    "[click me](javascript:window.__xss='link')",
    "[ref link][evil]\n\n[evil]: javascript:window.__xss='ref'",
    "<javascript:window.__xss='autolink'>",
    "<a href=\"javascript:window.__xss='raw-a'\">raw link</a>",
    "<iframe src=\"javascript:parent.__xss='iframe'\"></iframe>",
    '<svg onload="window.__xss = \'svg\'"><circle r="5"></circle></svg>',
    "<details open ontoggle=\"window.__xss = 'details'\">x</details>",
    "![pic](x\" onerror=\"window.__xss='img-md')",
    "![pic](javascript:window.__xss='img-js')",
    '<style>body { display: none }</style><object data="javascript:alert(1)"></object>',
    '<p onclick="window.__xss=\'p\'">click</p> <b onmouseover="alert(1)">bold</b>',
    "`<script>` in code stays text, and so does <br> in prose",
]

# Anything in the transcript that could run code, load something, or restyle the page.
DANGER_JS = """() => {
  const root = document.getElementById('transcript');
  const bad = [];
  for (const node of root.querySelectorAll('*')) {
    const tag = node.tagName.toLowerCase();
    if (['script', 'iframe', 'svg', 'img', 'object', 'embed', 'style', 'details', 'math',
         'form', 'link', 'meta', 'base'].includes(tag)) bad.push(tag);
    for (const attr of node.attributes) {
      if (attr.name.startsWith('on') || attr.name === 'style' || attr.name === 'src') {
        bad.push(`${tag}[${attr.name}]`);
      }
      if (/^\\s*(javascript|data|vbscript):/i.test(attr.value)) bad.push(`${tag}[${attr.name}=js]`);
    }
  }
  return bad;
}"""


async def test_answers_render_markdown_and_nothing_in_them_can_run(
    browser: Browser, api: Api
) -> None:
    dialogs: list[str] = []
    page = await _open(browser, api, "md", prefix="")
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    # The payloads are live: put into the page as HTML, one sets the flag at once.
    await page.evaluate(
        "() => { const d = document.createElement('div');"
        " d.innerHTML = `<img src=x onerror=\"window.__xss = 'control'\">`;"
        " document.body.append(d); }"
    )
    await page.wait_for_function("window.__xss === 'control'")
    await page.evaluate("() => { delete window.__xss; }")

    for payload in PAYLOADS:
        await _say(page, payload)
    answers = page.locator(".msg.assistant")
    await expect(answers).to_have_count(len(PAYLOADS))
    await expect(answers.last).to_have_attribute("data-done", "true")
    await page.wait_for_function("!chatbridge.renderQueued")
    # Every link the payloads made lost its javascript: URL; clicking them runs nothing.
    links = page.locator("#transcript .msg.assistant a")
    assert await links.count() >= 4
    assert await page.locator("#transcript .msg.assistant a[href]").count() == 0
    for link in await links.all():
        await link.click()

    assert await page.evaluate("() => window.__xss") is None
    assert dialogs == []
    assert await page.evaluate(DANGER_JS) == []
    bodies = [" ".join(t.split()) for t in await answers.locator(".body").all_text_contents()]
    # Raw HTML is shown as the text it is, not dropped and not run.
    assert "<script>window.__xss = 'script'</script>" in bodies[0]
    assert "<iframe" in bodies[6] and "<svg onload" in bodies[7]
    assert bodies[-1] == "<script> in code stays text, and so does <br> in prose"
    # User messages are plain text, always.
    assert await page.locator(".msg.user .text").all_text_contents() == PAYLOADS
    await browser.shot(page, "answers-05-xss-payloads")

    # Normal Markdown does render: paragraphs, a list, emphasis, a link, code.
    await _say(
        page,
        "Some **bold** and *italic* text.\n\n"
        "- first item\n- second item\n\n"
        "1. one\n2. two\n\n"
        'See [the docs](https://example.org/docs "Docs") and `inline()` code.\n\n'
        "```python\nprint('hi')\nx = 1 < 2\n```",
    )
    last = answers.nth(len(PAYLOADS))
    await expect(last).to_have_attribute("data-done", "true")
    body = last.locator(".body")
    await expect(body.locator("strong")).to_have_text("bold")
    await expect(body.locator("em")).to_have_text("italic")
    await expect(body.locator("ul > li")).to_have_text(["first item", "second item"])
    await expect(body.locator("ol > li")).to_have_text(["one", "two"])
    link = body.locator("a")
    await expect(link).to_have_text("the docs")
    await expect(link).to_have_attribute("href", "https://example.org/docs")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(body.locator("p code")).to_have_text("inline()")
    code = body.locator(".code-block pre > code.language-python")
    await expect(code).to_have_text("print('hi')\nx = 1 < 2\n")
    await expect(body.locator(".code-block button.copy")).to_have_text("Copy")
    await expect(body.locator("p")).to_have_count(2)
    assert await page.evaluate(DANGER_JS) == []
    await last.scroll_into_view_if_needed()  # clicking the links above scrolled away
    await browser.shot(page, "answers-06-markdown")


async def test_the_copy_button_copies_the_code_block(browser: Browser, api: Api) -> None:
    await browser.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=browser.origin
    )
    page = await _open(browser, api, "code", prefix="")
    code = "def add(a, b):\n    return a + b  # <not html>\n\nprint(add(1, 2))"
    await _say(page, f"Two blocks:\n\n```python\n{code}\n```\n\n```\nsecond block\n```")
    blocks = page.locator(".msg.assistant .code-block")
    await expect(blocks).to_have_count(2)
    await page.bring_to_front()
    await blocks.nth(0).locator("button.copy").click()
    await expect(blocks.nth(0).locator("button.copy")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == code
    await blocks.nth(1).locator("button.copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == "second block"
    # The label goes back, so the next copy is visibly a new one.
    await expect(blocks.nth(0).locator("button.copy")).to_have_text("Copy")
    await browser.shot(page, "answers-07-copied")


@pytest.mark.chatbridge(agent_class=BurstAgent)
async def test_a_long_streamed_answer_is_rendered_far_less_often_than_it_has_deltas(
    browser: Browser, api: Api
) -> None:
    page = await _open(browser, api, "long")
    await _say(page, "go")
    answer = page.locator(".msg.assistant")
    await expect(answer).to_have_attribute("data-done", "true", timeout=60_000)
    expected = " ".join(str(i) for i in range(BurstAgent.chunks))
    assert " ".join((await answer.locator(".body").text_content() or "").split()) == expected
    renders = (await _debug(page))["markdownRenders"]
    assert 1 <= renders <= BurstAgent.chunks // 20, renders


# -- Download ----------------------------------------------------------------------------------


async def test_download_saves_the_conversation_as_markdown(
    browser: Browser, api: Api, tmp_path: Any
) -> None:
    page = await _open(browser, api, "demo")
    download = page.locator("#download")
    await expect(download).to_be_enabled()
    await _say(page, "hello there")
    await _say(page, "a *second* message")
    await expect(page.locator(".msg.assistant")).to_have_count(2)
    await expect(page.locator(".msg.assistant").nth(1)).to_have_attribute("data-done", "true")

    async with page.expect_download() as info:
        await download.click()
    saved = await info.value
    assert saved.suggested_filename == "demo.md"
    target = tmp_path / "saved.md"
    await saved.save_as(target)
    text = target.read_text(encoding="utf-8")
    history = await api.ok("GET", "sessions", "demo", "events", params={"after": "0"})
    assert text == render("markdown", "demo", history["events"])
    assert "**User**\n\nhello there" in text
    assert "**Agent**\n\nEcho: a *second* message" in text
    await expect(page.locator("#download-error")).to_be_hidden()

    # A failed download is said beside the button, and the next one clears it.
    async def gone(route: Any) -> None:
        body = {"error": "no session 'demo'", "code": "session_unknown"}
        await route.fulfill(status=404, content_type="application/json", body=json.dumps(body))

    await browser.context.route("**/chatbridge/api/sessions/demo/export?*", gone)
    await download.click()
    await expect(page.locator("#download-error")).to_have_text(
        "could not download: no session 'demo'"
    )
    await browser.shot(page, "answers-08-download-failed")
    await browser.context.unroute("**/chatbridge/api/sessions/demo/export?*")
    async with page.expect_download() as info:
        await download.click()
    assert (await info.value).suggested_filename == "demo.md"
    await expect(page.locator("#download-error")).to_be_hidden()
