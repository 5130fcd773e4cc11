"""Imports of the packages that only an extra of django-lightspeed-oauth installs."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "require"]


class MissingExtra(ImportError):
    """A part of the app was used without the extra that installs what it needs."""


def require(module: str, extra: str, *, what: str) -> ModuleType:
    """Import ``module``, or fail with an error that says which extra to install.

    ``what`` names the part of the app that needs it, e.g. "The Celery task".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name != module and not module.startswith(exc.name + "."):
            raise  # the module is there but something it imports is broken: show that error
        raise MissingExtra(
            f"{what} needs {module.split('.')[0]}, which is not installed: "
            f'pip install "django-lightspeed-oauth[{extra}]"',
            name=module,
        ) from exc
