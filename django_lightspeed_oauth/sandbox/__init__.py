"""Optional app: local look-alikes of Lightspeed's OAuth authorization servers, for building and testing."""

from __future__ import annotations

from typing import Any

__all__ = ["register_client"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the package (as INSTALLED_APPS does) does not import models before apps are ready.
    if name == "register_client":
        from .models import register_client

        return register_client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
