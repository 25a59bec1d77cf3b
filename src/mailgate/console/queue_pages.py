"""The queue pages: the filtered, paged list, one message in full, and the admin actions.

Owns: `/queue` (filters state, sender, recipient, domain and age; keyset pages of PAGE_SIZE over
`QueueFilter.after`, so the 2,000th page costs what the first does), `/queue/{id}` (envelope,
headers, per-recipient state, every delivery attempt from the transaction log with next hop and
reply, screening verdicts), and the actions hold, release, retry now, delete and bounce: a GET
shows the confirmation, the POST (CSRF-checked by the guard) acts through `QueueAdmin`, exactly as
`mailgate queue` does, and writes an `admin.action` record naming the admin.
Must not: touch the store but through QueueAdmin and QueueStore.list/get, or parse the log
beyond trace.py.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web

from mailgate.config.types import Duration
from mailgate.console import trace
from mailgate.console.context import SESSION_KEY, Console
from mailgate.observe import jsonlog
from mailgate.queue.store import MessageState, QueueFilter

log = logging.getLogger("mailgate.console")

PAGE_SIZE = 50
ACTIONS = {  # action -> (QueueAdmin operation, button text, what the confirmation says)
    "hold": ("hold", "Hold", "Put the message on hold: it is not delivered until released."),
    "release": ("release", "Release", "Release the message: it is due for delivery now."),
    "retry": ("retry", "Retry now", "Make every pending recipient due now."),
    "delete": ("delete", "Delete", "Delete the message without telling the sender. This cannot be undone."),
    "bounce": ("bounce", "Bounce", "Fail every pending recipient and send the sender a DSN. This cannot be undone."),
}
MAX_REASON = 200
ARRIVAL_SLACK = 3600.0  # seconds before a message's `created` its connection may have opened (a long session)
QUEUE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Header fields that carry screening and authentication verdicts (ours and upstream's).
VERDICT_HEADERS = re.compile(r"^(authentication-results|arc-authentication-results|x-spam[\w-]*|x-mailgate[\w-]*"
                             r"|x-virus[\w-]*|received-spf):", re.IGNORECASE)


def add_routes(router: web.UrlDispatcher, console: Console) -> None:
    services = console.services

    async def listing(request: web.Request) -> web.Response:
        query, problems = _filter_of(request.query)
        rows = await services.store.list(query) if not problems else []
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        next_after = f"{rows[-1].created!r}:{rows[-1].queue_id}" if more and rows else ""
        depth = await console.queue_depth()
        return console.render(
            request, "queue.html", rows=rows, more=more, next_after=next_after, problems=problems,
            filters={name: request.query.get(name, "") for name in ("state", "sender", "recipient", "domain", "older")},
            states=[state.value for state in MessageState], depth={s.value: depth.get(s, 0) for s in MessageState},
            now=services.clock.now(), done=request.query.get("done", ""),
        )

    async def message(request: web.Request) -> web.Response:
        queue_id = _queue_id(request)
        shown = await services.admin.run("show", {"queue_id": queue_id})
        detail = shown["message"]
        story = await _story(console, queue_id, detail["created"] if detail else None)
        attempts = [r for r in story.records if r.get("event") == jsonlog.DELIVERY_ATTEMPT] if story else []
        headers = _unfold(detail["headers"]) if detail else []
        accepted = story.accepted if story else None
        verdicts = [line for line in headers if VERDICT_HEADERS.match(line)]
        screen_rules = [part for part in str((accepted or {}).get("rule", "")).split() if part.startswith("screen:")]
        return console.render(
            request, "message.html", status=200 if detail else 404, queue_id=queue_id, message=detail,
            headers=headers, attempts=attempts, accepted=accepted, verdicts=verdicts, screen_rules=screen_rules,
            records=story.records if story else [], actions=ACTIONS, now=services.clock.now(),
            done=request.query.get("done", ""),
        )

    async def confirm(request: web.Request) -> web.Response:
        queue_id, action = _queue_id(request), _action(request)
        detail = (await services.admin.run("show", {"queue_id": queue_id}))["message"]
        return console.render(request, "confirm.html", status=200 if detail else 404, queue_id=queue_id,
                              action=action, label=ACTIONS[action][1], warning=ACTIONS[action][2], message=detail)

    async def act(request: web.Request) -> web.StreamResponse:
        queue_id, action = _queue_id(request), _action(request)
        form = await request.post()
        reason = str(form.get("reason", "")).strip()[:MAX_REASON]
        session = request[SESSION_KEY]
        operation = ACTIONS[action][0]
        if operation == "hold" and not reason:
            reason = f"held by {session.user} (web console)"
        result = await services.admin.run(operation, {"queue_id": queue_id}, reason)
        ids = result.get("ids", [])
        console.forget_queue_depth()
        services.log.admin_action(session.user, action, ids, client_ip=request.remote or "", reason=reason)
        log.info("console: %s by %s on %s: %s", action, session.user, queue_id, ", ".join(ids) or "nothing matched")
        if action in ("delete", "bounce") and ids:
            raise web.HTTPSeeOther(f"/queue?done={action}+{queue_id}")
        raise web.HTTPSeeOther(f"/queue/{queue_id}?done={action}" + ("" if ids else "+(nothing+to+do)"))

    router.add_get("/queue", listing)
    router.add_get("/queue/{queue_id}", message)
    router.add_get("/queue/{queue_id}/{action}", confirm)
    router.add_post("/queue/{queue_id}/{action}", act)


def _queue_id(request: web.Request) -> str:
    queue_id = request.match_info["queue_id"]
    if not QUEUE_ID.match(queue_id):
        raise web.HTTPNotFound(text="no such queue id\n")
    return queue_id


def _action(request: web.Request) -> str:
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise web.HTTPNotFound(text=f"unknown action; known: {', '.join(ACTIONS)}\n")
    return action


def _filter_of(params) -> tuple[QueueFilter, list[str]]:
    """The store filter from the page's query string, and what was wrong with it."""
    problems = []
    query = QueueFilter(limit=PAGE_SIZE + 1)
    state = params.get("state", "")
    if state:
        try:
            query.state = MessageState(state)
        except ValueError:
            problems.append(f"state: {state!r} is not one of {', '.join(s.value for s in MessageState)}")
    for name in ("sender", "recipient", "domain"):
        value = params.get(name, "").strip()
        if value:
            setattr(query, name, value)
    older = params.get("older", "").strip()
    if older:
        try:
            query.older_than = Duration(minimum=0).convert(older)
        except ValueError as exc:
            problems.append(f"age: {exc}")
    after = params.get("after", "")
    if after:
        created, _, queue_id = after.partition(":")
        try:
            query.after = (float(created), queue_id)
        except ValueError:
            problems.append("after: not a page position")
    return query, problems


async def _story(console: Console, queue_id: str, created: float | None) -> trace.Story | None:
    """The message's records; a message still queued is read for from the day it arrived only."""
    json_file = console.services.config().log.json_file
    if not json_file:
        return None
    await asyncio.to_thread(console.services.log.flush, 1.0)  # blocks: off the loop
    since = created - ARRIVAL_SLACK if created is not None else None
    found = await asyncio.to_thread(trace.trace, jsonlog.log_files(json_file, since), queue_id, "queue_id", since)
    return next((story for story in found.stories if story.queue_id == queue_id), None)


def _unfold(headers: str) -> list[str]:
    """One line per header field (RFC 5322 §2.2.3 unfolding) for the page."""
    return [re.sub(r"\r?\n[ \t]+", " ", field) for field in re.split(r"\r?\n(?![ \t])", headers.strip()) if field]
