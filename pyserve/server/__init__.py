"""OpenAI-compatible HTTP server over an EngineClient (FastAPI + uvicorn + prometheus-client)."""

from pyserve.server.app import DEFAULT_MAX_REQUEST_BYTES, build_app

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "build_app"]
