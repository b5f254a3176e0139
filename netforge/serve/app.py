"""The web app: ``create_app(workspace)`` returns a Starlette app serving the pages
(server-rendered Jinja2 templates, a little script for forms and live updates) and the JSON
API (api.py). ``run(...)`` serves it with uvicorn.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from netforge.errors import NetforgeError
from netforge.serve import api, networks, security
from netforge.serve.classify import Classification
from netforge.serve.datasets import Datasets
from netforge.serve.jobs import Jobs
from netforge.serve.store import NotFound, Store
from netforge.serve.workspace import DEFAULT_MAX_UPLOAD_BYTES, PathRefused, Workspace
from netforge.version import __version__

HERE = Path(__file__).resolve().parent
log = logging.getLogger("netforge.serve")
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length up front and
    by counting what arrives (a chunked upload has no length)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"error": f"the upload is {int(length)} bytes; the limit is "
                                              f"{self.limit} bytes"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise api.UploadTooLarge(f"the upload is over the limit of {self.limit} bytes")
            return message

        return await self.app(scope, counted, send)


class TokenGate:
    """Requests from other sites are refused (security.foreign_request); with a token set,
    every request must carry it (header, ?token= or the cookie a visit with ?token= leaves)."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = security.foreign_request(request.method, request.headers.get("host", ""),
                                           request.headers.get("origin"),
                                           loopback_only=self.token is None)
        if refusal:
            return await JSONResponse({"error": refusal}, status_code=403)(scope, receive, send)
        if self.token is None:
            return await self.app(scope, receive, send)
        given = security.request_token(request.headers, request.query_params, request.cookies)
        if not security.token_matches(given, self.token):
            response = JSONResponse({"error": "this server needs its token: open it with "
                                              "?token=... or send Authorization: Bearer ..."},
                                    status_code=401)
            return await response(scope, receive, send)
        if request.query_params.get("token"):
            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    cookie = (f"{security.TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; "
                              "SameSite=Strict").encode()
                    message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
                await send(message)
            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


def _error_status(exc: Exception) -> int:
    if isinstance(exc, api.UploadTooLarge):
        return 413
    if isinstance(exc, PathRefused):
        return 403
    if isinstance(exc, NotFound):
        return 404
    return 400


async def netforge_error(request: Request, exc: NetforgeError):
    status = _error_status(exc)
    if request.url.path.startswith("/api"):
        return JSONResponse({"error": str(exc)}, status_code=status)
    return templates.TemplateResponse(request, "error.html", {"message": str(exc)},
                                      status_code=status)


# -- pages --------------------------------------------------------------------------------


def page(name: str):
    async def render(request: Request):
        state = request.app.state
        context = {"datasets": state.datasets.list(), "jobs": state.jobs.list(),
                   "networks": [*networks.bundled_networks(), "custom"],
                   "solver_types": networks.SOLVER_TYPES, "lr_policies": networks.LR_POLICIES,
                   "folders": state.workspace.folders(), "version": __version__}
        if "id" in request.path_params:
            item_id = int(request.path_params["id"])
            if name == "dataset.html":
                context["dataset"] = state.datasets.get(item_id)
                if context["dataset"] is None:
                    raise NotFound(f"no dataset {item_id}")
            else:
                job = state.jobs.require(item_id)
                context["job"] = job
                context["dataset"] = state.datasets.get(job["dataset_id"])
        return templates.TemplateResponse(request, name, context)

    return render


async def favicon(request: Request):
    return RedirectResponse("/static/favicon.svg")


def create_app(workspace_root, *, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> Starlette:
    workspace = Workspace(workspace_root, max_upload_bytes)
    store = Store(workspace.database)
    datasets = Datasets(workspace, store)
    jobs = Jobs(workspace, store, datasets)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        jobs.shutdown()

    routes = [
        Route("/", page("index.html")),
        Route("/datasets", page("datasets.html")),
        Route("/datasets/{id:int}", page("dataset.html")),
        Route("/jobs/new", page("job_new.html")),
        Route("/jobs/{id:int}", page("job.html")),
        Route("/api", page("api.html")),
        Route("/favicon.ico", favicon),
        *api.ROUTES,
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={NetforgeError: netforge_error})
    app.state.workspace = workspace
    app.state.store = store
    app.state.datasets = datasets
    app.state.jobs = jobs
    app.state.classification = Classification(workspace, jobs)
    app.add_middleware(BodyLimit, limit=workspace.max_upload_bytes)
    app.add_middleware(TokenGate, token=token)  # outermost: nothing runs before the check
    return app


def run(workspace_root, host: str = "127.0.0.1", port: int = 5000, token: str | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, on_ready=None) -> None:
    """Serve until interrupted (jobs still running are stopped with a snapshot)."""
    token = security.bind_token(host, token)
    # Classification builds nets in this process: their per-layer set-up lines belong in a
    # job's log, not on the server's console.
    logging.getLogger("netforge").setLevel(logging.WARNING)
    app = create_app(workspace_root, token=token, max_upload_bytes=max_upload_bytes)
    if on_ready is not None:
        on_ready(token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=3)
    uvicorn.Server(config).run()
