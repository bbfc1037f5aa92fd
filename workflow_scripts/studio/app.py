"""The studio's ASGI app: pages, the JSON endpoints behind them, live pushes, the /v1 API."""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from workflow_scripts.studio.batching import Overloaded
from workflow_scripts.studio.catalog import STATUSES, Catalog
from workflow_scripts.studio.chat_engine import ModelPool
from workflow_scripts.studio.compare import comparison
from workflow_scripts.studio.general_view import general_view
from workflow_scripts.studio.exports_view import exports_view
from workflow_scripts.studio.data_view import dataset_summary, search
from workflow_scripts.studio.errors import BadRequest, UnknownName
from workflow_scripts.studio.files import read_from, read_tail
from workflow_scripts.studio.logs import find_log, log_listing
from workflow_scripts.studio.guard import RequestGuard, allowed_hosts
from workflow_scripts.studio.openai_api import RequestLimits, build_router, openai_error

HERE = Path(__file__).resolve().parent
PAGES = {"experiments": "Experiments", "compare": "Compare", "live": "Live", "chat": "Chat",
         "data": "Data", "logs": "Logs", "report": "Report"}
TOKEN_COOKIE = "studio_token"
REPORT = Path("results/report/training_report.html")


@dataclass
class StudioSettings:
    config: Path
    workdir: Path
    token: str | None = None
    max_tokens_cap: int = 512
    push_interval_s: float = 1.0
    stale_after_s: float = 900.0
    log_tail_bytes: int = 200_000
    threads: int | None = None  # torch's intra-op threads for generation; None: torch's default
    host: str = "127.0.0.1"  # the address served: requests must name it (or an allowed host)
    allowed_hosts: tuple[str, ...] = ()  # more names a request's Host may carry
    secure_cookie: bool = False  # served over TLS: the token cookie is Secure
    batching: bool = True  # False: one generation at a time per base (the unbatched baseline)
    max_batch: int = 16  # rows decoded together per base model
    queue_depth: int = 32  # requests waiting per base model beyond the batch; then 429
    limits: RequestLimits = field(default_factory=RequestLimits)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownName)
    async def unknown(_: Request, err: UnknownName):
        return openai_error(404, str(err), "not_found_error", code=f"unknown_{err.kind.replace(' ', '_')}",
                            name=err.name, known=err.known)

    @app.exception_handler(BadRequest)
    async def bad(_: Request, err: BadRequest):
        return openai_error(400, str(err), "invalid_request_error", param=err.param)

    @app.exception_handler(Overloaded)
    async def busy(_: Request, err: Overloaded):
        response = openai_error(429, str(err), "rate_limit_error", code="queue_full")
        response.headers["Retry-After"] = str(err.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError):
        problems = err.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p not in ("body", "query"))
        message = f"invalid {field or 'request'}: {first['msg']}"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                       "param": field or None, "code": None},
                             "detail": json.loads(json.dumps(problems, default=str))},
                            status_code=422)


def _token_guard(app: FastAPI, token: str, secure: bool) -> None:
    """Every request must carry the token: a bearer header, a cookie, or `?token=` (which
    then sets the cookie, so a browser opened with the link stays signed in)."""

    @app.middleware("http")
    async def check_token(request: Request, call_next: Callable):
        header = request.headers.get("authorization", "")
        given = (header[7:] if header.lower().startswith("bearer ") else None) \
            or request.cookies.get(TOKEN_COOKIE) or request.query_params.get("token")
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            return openai_error(401, "missing or wrong access token", "authentication_error")
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=secure)
        return response


def create_app(settings: StudioSettings, pool: ModelPool | None = None) -> FastAPI:
    catalog = Catalog(settings.config, settings.workdir, settings.stale_after_s)
    pool = pool or ModelPool(catalog, settings.max_tokens_cap, settings.threads,
                             batching=settings.batching, max_batch=settings.max_batch,
                             queue_depth=settings.queue_depth)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        threading.Thread(target=pool.warm_up, name="studio-warm-up", daemon=True).start()
        yield

    app = FastAPI(title="LoRA workflow studio", docs_url="/api/docs", redoc_url=None,
                  lifespan=lifespan)
    app.state.catalog, app.state.pool, app.state.settings = catalog, pool, settings
    # Set before the server stops, so that pushes end instead of holding the shutdown up.
    app.state.stopping = threading.Event()
    _error_handlers(app)
    if settings.token:
        _token_guard(app, settings.token, settings.secure_cookie)
    # Added last, so it runs first: nothing else sees a refused request.
    app.add_middleware(RequestGuard, hosts=allowed_hosts(settings.host, settings.allowed_hosts),
                       max_body_bytes=settings.limits.max_body_bytes)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(build_router(pool, settings.limits))
    _pages(app, catalog)
    _experiment_api(app, catalog, settings)
    _data_and_logs_api(app, catalog, settings)
    return app


def _pages(app: FastAPI, catalog: Catalog) -> None:
    templates = Jinja2Templates(directory=HERE / "templates")

    def page(name: str):
        async def render(request: Request) -> HTMLResponse:
            return templates.TemplateResponse(request, f"{name}.html", {
                "page": name, "pages": PAGES, "config": str(catalog.config_path)})
        return render

    app.get("/", response_class=HTMLResponse)(page("experiments"))
    for name in PAGES:
        app.get(f"/{name}", response_class=HTMLResponse)(page(name))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/report/view")
    def report_view() -> Response:
        path = catalog.workdir / REPORT
        if not path.is_file():
            return HTMLResponse("<p>No report yet: run <code>snakemake</code> first "
                                f"(expected {REPORT}).</p>", status_code=404)
        return FileResponse(path, media_type="text/html")


def _experiment_api(app: FastAPI, catalog: Catalog, settings: StudioSettings) -> None:
    # Big answers skip FastAPI's per-value encoder: they are plain JSON types already.
    @app.get("/api/experiments")
    def experiments() -> JSONResponse:
        rows = catalog.rows()
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        return JSONResponse({"experiments": rows, "counts": counts, "config": str(catalog.config_path)})

    @app.get("/api/experiments/{name}")
    def experiment(name: str) -> dict:
        return {"row": catalog.row(name), "config": catalog.experiment(name),
                "curves": catalog.curves(name), **general_view(catalog.workdir, [name]),
                "exports": exports_view(catalog.workdir, name,
                                        catalog.experiment(name)["base_model"])}

    @app.get("/api/exports")
    def exports() -> dict:
        """Every experiment's exports and how to run them (docs/export.md)."""
        found = {n: exports_view(catalog.workdir, n, catalog.experiment(n)["base_model"])
                 for n in (r["experiment"] for r in catalog.rows())}
        return {"exports": {n: rows for n, rows in found.items() if rows}}

    @app.get("/api/compare")
    def compare(e: list[str] = Query(..., min_length=1, description="experiment names")) -> JSONResponse:
        names = list(dict.fromkeys(e))
        for name in names:
            catalog.experiment(name)
        return JSONResponse(comparison(catalog, names))

    @app.get("/api/live")
    def live() -> dict:
        return {"time": time.time(), "running": catalog.live()}

    @app.get("/api/live/events")
    async def live_events(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            while not (app.state.stopping.is_set() or await request.is_disconnected()):
                payload = await asyncio.to_thread(lambda: {"time": time.time(), "running": catalog.live()})
                yield f"data: {json.dumps(payload)}\n\n"
                await asyncio.sleep(settings.push_interval_s)
        return _sse(events())

    @app.get("/api/chat/models")
    def chat_models() -> dict:
        """Base models and, under each, the experiments whose adapters can be attached."""
        available = app.state.pool.available()
        bases = {}
        for name in catalog.base_models:
            adapters = [{"experiment": t.model_id, "quantized": t.quantized}
                        for t in available.values() if t.experiment and t.base_model == name]
            bases[name] = {"ready": name in available, "adapters": adapters,
                           "max_tokens_cap": settings.max_tokens_cap}
        return {"base_models": bases}

    @app.get("/api/chat/load")
    def chat_load() -> dict:
        """Per loaded base model: rows decoding in its batch and requests queued."""
        return {"batching": settings.batching, "bases": app.state.pool.load()}


def _data_and_logs_api(app: FastAPI, catalog: Catalog, settings: StudioSettings) -> None:
    @app.get("/api/datasets")
    def datasets() -> dict:
        catalog.reload()
        return {"datasets": [dataset_summary(n, s, catalog.dataset_dir(n))
                             for n, s in catalog.datasets.items()]}

    @app.get("/api/datasets/{name}")
    def dataset(name: str) -> dict:
        return dataset_summary(name, catalog.dataset(name), catalog.dataset_dir(name))

    @app.get("/api/datasets/{name}/search")
    def dataset_search(name: str, q: str = Query("", max_length=200),
                       where: str = Query("rejects", pattern="^(rejects|train|valid|test)$"),
                       limit: int = Query(100, ge=1, le=1000)) -> dict:
        return search(catalog.dataset_dir(name), q, where, limit)

    @app.get("/api/logs")
    def logs() -> dict:
        return {"logs": log_listing(catalog.workdir)}

    @app.get("/api/logs/view")
    def log_view(name: str = Query(..., min_length=1)) -> dict:
        text, size = read_tail(find_log(catalog.workdir, name), settings.log_tail_bytes)
        return {"name": name, "text": text, "size": size,
                "truncated": size > settings.log_tail_bytes}

    @app.get("/api/logs/follow")
    async def log_follow(request: Request, name: str = Query(..., min_length=1),
                         offset: int = Query(0, ge=0)) -> StreamingResponse:
        path = find_log(catalog.workdir, name)

        async def events() -> AsyncIterator[str]:
            position = offset
            while not (app.state.stopping.is_set() or await request.is_disconnected()):
                text, position = await asyncio.to_thread(read_from, path, position, 1 << 20)
                if text:
                    yield f"data: {json.dumps({'text': text, 'offset': position})}\n\n"
                else:
                    yield ": idle\n\n"
                await asyncio.sleep(settings.push_interval_s)
        return _sse(events())


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
