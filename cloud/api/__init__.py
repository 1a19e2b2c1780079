"""The cloud's HTTP API (FastAPI). Build it with :func:`create_app`."""

from cloud.api.app import create_app

__all__ = ["create_app"]
