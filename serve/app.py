"""The FastAPI application, served by uvicorn outside Ray (docs/architecture.md, The API process)."""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from deployments.memory import return_large_buffers_to_the_system
from serve.errors import install_error_handlers
from serve.limits import RequestLimitsMiddleware
from serve.metrics import install_metrics
from serve.routes import health, media, styles, task_types, tasks, web
from serve.uploads import max_request_body_bytes
from tasks.config import get_settings


def create_app() -> FastAPI:
    # /docs and /redoc from bundled files: they work without internet access (air-gapped clusters, trains).
    app = FastAPIOffline(
        title="backendai",
        summary="AI image jobs over REST: queued with Celery on Redis, run on Ray Serve deployments.",
        description="Create a task, follow it (`status`, `events`), fetch its `result`. Send your API key as "
                    "`Authorization: Bearer <key>` or `X-API-Key` when the server gives you one; the web page at `/` "
                    "and the `backendai` CLI use this same API.",
        version="0.1.0",
    )
    install_error_handlers(app)
    return_large_buffers_to_the_system()  # a burst of large uploads must not keep the process large (#14)
    settings = get_settings()
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=max_request_body_bytes(settings),
                       body_timeout_s=settings.request_body_timeout_s)
    install_metrics(app)  # added last, so outermost: it also counts what the limits refuse
    app.include_router(tasks.router)
    app.include_router(media.router)
    app.include_router(health.router)
    app.include_router(styles.router)
    app.include_router(task_types.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.WEB_DIR), name="static")
    return app


app = create_app()
