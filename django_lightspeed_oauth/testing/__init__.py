"""The test kit: what the app's own tests use, for the tests of sites that use the app.

- :func:`make_client`, :func:`make_company`: factories (need a database, as any model does);
- :class:`FakeTokenEndpoint`: a token endpoint inside the test process, plugged into ``responses``
  (``pip install "django-lightspeed-oauth[testing]"``);
- :class:`TokenServer`: a real HTTP token server on 127.0.0.1, for several threads or processes; also
  ``python -m django_lightspeed_oauth.testing.tokenserver``;
- :func:`fingerprint`: the one-way label that the app logs and shows instead of a token.

Both token endpoints rotate refresh tokens as Lightspeed does, from the same model
(:mod:`django_lightspeed_oauth.testing.families`). Names are imported when first used, so the token
server runs as a process without Django settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fakes import FakeTokenEndpoint, make_client, make_company
    from .families import fingerprint
    from .tokenserver import TokenServer

__all__ = ["FakeTokenEndpoint", "TokenServer", "fingerprint", "make_client", "make_company"]

_WHERE = {
    "FakeTokenEndpoint": "fakes",
    "make_client": "fakes",
    "make_company": "fakes",
    "TokenServer": "tokenserver",
    "fingerprint": "families",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
