"""The review server (Starlette): one run's page, its crops, and the correction API.

What it serves, and nothing else:
  GET  /?page=N                  the page (differential + one page of the gallery), rendered
                                 server-side; a page holds `page_size` cells (120) so it loads in
                                 well under a second however many cells the run has
  GET  /static/<file>            the page's own CSS/JS, shipped in the package (no CDN: works offline)
  GET  /img/crops/<name>         a crop this run saved, listed in its cells.csv (no other file:
  GET  /img/context/<name>       no '..', no encoded slashes, no symlinks out of the run folder)
  GET  /api/state                counts and every cell's current class (JSON)
  POST /api/correct              {"cell": "frame:cell", "class": "..."} -> corrections.csv
  POST /api/undo                 revert the last change

Requests must name an allowed Host (defeats DNS rebinding of a localhost server), POSTs must be
JSON from the page's own origin (a foreign web page cannot post to it), and with a token (always
when bound to a non-loopback address) every request must carry it: `?token=` once (it is then
kept in a same-site cookie) or the X-Review-Token header.
"""
from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hemaedge.review.rundata import NOT_A_CELL, RunReview, cell_key, confidence_text

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "hemaedge_review_token"
# One key per choice, like a manual differential counter: 1..9 for the classes in order, 0 = not a cell.
CLASS_KEYS = "123456789"
PAGE_SIZE = 120


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def key_map(choices: list[str]) -> dict[str, str]:
    keys = {}
    for i, c in enumerate(x for x in choices if x != NOT_A_CELL):
        if i < len(CLASS_KEYS):
            keys[CLASS_KEYS[i]] = c
    keys["0"] = NOT_A_CELL
    return keys


def _label(cls: str) -> str:
    return "not a cell" if cls == NOT_A_CELL else cls.replace("_", " ")


class TokenGate:
    """ASGI middleware: every request needs the token (query, cookie or header) when one is set."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.token:
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = (request.query_params.get("token") or request.headers.get("x-review-token")
                 or request.cookies.get(TOKEN_COOKIE) or "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            resp = PlainTextResponse("This review page needs its token: open the URL `hemaedge review` printed.",
                                     status_code=403)
            return await resp(scope, receive, send)
        if request.query_params.get("token"):
            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    cookie = (f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict").encode()
                    message.setdefault("headers", []).append((b"set-cookie", cookie))
                await send(message)
            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


def paginate(gallery: list, page_size: int) -> list[list[tuple[str, list, int]]]:
    """The gallery cut into pages of `page_size` cells; each page a list of (group title, its cells
    on this page, the group's size over all pages)."""
    sizes: dict[str, int] = {}
    for title, _ in gallery:
        sizes[title] = sizes.get(title, 0) + 1
    pages = []
    for start in range(0, len(gallery), page_size):
        groups: list[tuple[str, list, int]] = []
        for title, cell in gallery[start:start + page_size]:
            if not groups or groups[-1][0] != title:
                groups.append((title, [], sizes[title]))
            groups[-1][1].append(cell)
        pages.append(groups)
    return pages or [[]]


def create_app(run_dir, *, token: str | None = None, allowed_hosts=None, reviewer: str = "",
               page_size: int = PAGE_SIZE) -> Starlette:
    run = RunReview.open(run_dir)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["label"] = _label
    env.filters["conf"] = confidence_text
    page = env.get_template("review.html")
    keys = key_map(run.choices)
    page_size = max(1, int(page_size))
    pages = paginate(run.gallery(), page_size)
    page_of = {c.key: n for n, groups in enumerate(pages, start=1) for _, cells, _ in groups for c in cells}
    model_name = (run.summary.get("model") or {}).get("name") or "unknown model"
    run.differential()  # computes (and remembers) the intervals now, not during the first page load

    def state(cells=None, diff=None) -> dict:
        """Counts, and the current class of `cells` (default: every cell)."""
        return {"differential": diff or run.differential(),
                "cells": {c.key: {"current": c.current, "reviewed": c.reviewed} for c in (run.cells if cells is None else cells)}}

    async def index(request: Request):
        try:
            n = min(max(1, int(request.query_params.get("page", "1"))), len(pages))
        except ValueError:
            n = 1
        groups = pages[n - 1]
        shown = [c for _, cells, _ in groups for c in cells]
        first = (n - 1) * page_size + 1 if shown else 0
        pager = {"page": n, "pages": len(pages), "first": first, "last": first + len(shown) - 1 if shown else 0,
                 "total": len(run.cells)}
        diff = run.differential()
        init = {"keys": keys, "choices": run.choices, "pager": pager, **state(shown, diff)}
        html = page.render(run=run, groups=groups, diff=diff, keys=keys, pager=pager,
                           choices=run.choices, run_name=run.root.name, model=model_name,
                           state_json=json.dumps(init).replace("</", "<\\/"))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def image(request: Request):
        path = run.crop_file(request.path_params["folder"], request.path_params["name"])
        if path is None:
            return PlainTextResponse("not a crop of this run", status_code=404)
        # A saved crop never changes: the browser keeps it for the whole review (every page).
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})

    async def api_state(request: Request):
        return JSONResponse(state())

    async def _json_body(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return None, JSONResponse({"error": "send JSON"}, status_code=415)
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            return None, JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        try:
            body = json.loads(await request.body() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None, JSONResponse({"error": "body is not JSON"}, status_code=400)
        return (body if isinstance(body, dict) else {}), None

    async def api_correct(request: Request):
        body, err = await _json_body(request)
        if err:
            return err
        try:
            row = run.correct(str(body.get("cell", "")), str(body.get("class", "")), reviewer)
        except KeyError:
            return JSONResponse({"error": "no such cell in this run"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"row": row, **state([run.by_key[cell_key(row["frame"], row["cell"])]])})

    async def api_undo(request: Request):
        _, err = await _json_body(request)
        if err:
            return err
        row = run.undo(reviewer)
        if row is None:
            return JSONResponse({"row": None, **state([])})
        # The page the undone cell is on, so the browser can go there if it is another one.
        key = cell_key(row["frame"], row["cell"])
        return JSONResponse({"row": row, "page": page_of.get(key, 1), **state([run.by_key[key]])})

    async def favicon(request: Request):
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/img/{folder}/{name}", image),
        Route("/api/state", api_state),
        Route("/api/correct", api_correct, methods=["POST"]),
        Route("/api/undo", api_undo, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static", follow_symlink=False), name="static"),
    ]
    hosts = list(allowed_hosts or LOOPBACK)
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(TokenGate, token=token)]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.run = run
    return app
