"""The route tests' in-process client (``api``), for the shapes of ``/api/ai``."""

from tests.routes.conftest import api, make_api

__all__ = ["api", "make_api"]
