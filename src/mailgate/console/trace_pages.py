"""The message trace page: `/trace?q=...&kind=...` over the JSON transaction log (trace.py).

Owns: the form, running the search in a thread over the last `log.retention_days` of files,
and handing the stories to the template. Must not: search itself (trace.py).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from mailgate.console import trace
from mailgate.console.context import Console
from mailgate.observe import jsonlog

MAX_QUERY = 300


def add_routes(router: web.UrlDispatcher, console: Console) -> None:
    async def page(request: web.Request) -> web.Response:
        query = request.query.get("q", "").strip()[:MAX_QUERY]
        kind = request.query.get("kind", "auto")
        if kind not in trace.KINDS:
            raise web.HTTPBadRequest(text=f"kind must be one of {', '.join(trace.KINDS)}\n")
        json_file = console.services.config().log.json_file
        result = None
        if query and json_file:
            await asyncio.to_thread(console.services.log.flush, 1.0)  # blocks: off the loop
            result = await asyncio.to_thread(trace.trace, jsonlog.log_files(json_file), query, kind)
        return console.render(request, "trace.html", query=query, kind=kind, kinds=trace.KINDS, result=result,
                              log_on=bool(json_file), max_messages=trace.MAX_MESSAGES)

    router.add_get("/trace", page)
