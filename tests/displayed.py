"""What a chat client should display for a session's history, and what the clients display.

`expected_display` rebuilds the conversation from history alone (seq order: user
messages, answers with their deltas and errors, notices), independently of the
clients' reducer. `widget_display` and `page_display` read what the widget's view and
the page's DOM show, in the same shape: `(role, text, error)` rows. The page renders
answers as Markdown, so its answer rows are compared as `as_page_shows` puts them.
"""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str | None]

# The page's DOM read out: every row of #transcript, in display order.
PAGE_ROWS_JS = """() => [...document.querySelectorAll('#transcript > .msg')].map((node) => {
  if (node.classList.contains('user')) {
    return ['user', node.querySelector('.text').textContent, null];
  }
  if (node.classList.contains('assistant')) {
    const error = node.querySelector('.agent-error');
    const body = node.querySelector('.body');
    const text = body ? body.textContent : '';
    return ['agent', text, error && !error.hidden ? error.textContent : null];
  }
  return ['notice', node.textContent, null];
})"""


async def server_history(server: Any, session_id: str) -> list[dict[str, Any]]:
    """Every event the server's history holds for the session, page by page."""
    import json

    from tornado.httpclient import AsyncHTTPClient

    events: list[dict[str, Any]] = []
    while True:
        after = events[-1]["seq"] if events else 0
        response = await AsyncHTTPClient().fetch(
            f"{server.url}chatbridge/api/sessions/{session_id}/events?after={after}",
            headers={"Authorization": f"token {server.token}"},
            request_timeout=60,
        )
        page = json.loads(response.body)["events"]
        if not page:
            return events
        events.extend(page)


def expected_display(history: list[dict[str, Any]]) -> list[Row]:
    rows: list[list[Any]] = []
    answers: dict[str, list[Any]] = {}
    for event in sorted(history, key=lambda e: e["seq"]):
        kind = event["type"]
        if kind == "user_message":
            rows.append(["user", event["text"], None])
        elif kind == "message_start":
            answers[event["messageId"]] = row = ["agent", "", None]
            rows.append(row)
        elif kind == "block_delta" and event["messageId"] in answers:
            answers[event["messageId"]][1] += event["text"]
        elif kind == "error":
            answer = answers.get(event.get("messageId") or "")
            if answer is not None:
                answer[2] = event["message"]
            else:
                rows.append(["notice", event["message"], None])
    return [(role, text, error) for role, text, error in rows]


def widget_display(summary: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for message in summary["messages"]:
        role = message["role"]
        error = message.get("error") if role == "agent" else None
        rows.append((role, message["text"], error))
    return rows


def as_page_shows(rows: list[Row]) -> list[Row]:
    """Rows as the page shows them: an answer is rendered Markdown, whose text has its
    runs of whitespace collapsed and none at its ends ("Echo: w0 w1 " shows "Echo: w0 w1")."""
    return [
        (role, " ".join(text.split()) if role == "agent" else text, error)
        for role, text, error in rows
    ]


def page_display(rows: list[list[Any]]) -> list[Row]:
    return as_page_shows([(str(role), str(text), error) for role, text, error in rows])
