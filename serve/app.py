"""The FastAPI application: runs as the Ray Serve ingress (serve/ingress.py) and under plain uvicorn."""

from fastapi import FastAPI

from serve.errors import install_error_handlers
from serve.routes import health, media, tasks


def create_app() -> FastAPI:
    app = FastAPI(
        title="backendai",
        summary="AI image jobs over REST: queued with Celery on Redis, run on Ray Serve deployments.",
        version="0.1.0",
    )
    install_error_handlers(app)
    app.include_router(tasks.router)
    app.include_router(media.router)
    app.include_router(health.router)
    return app


app = create_app()
