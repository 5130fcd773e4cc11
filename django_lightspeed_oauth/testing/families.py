"""Rotating refresh tokens as Lightspeed issues them: the one model both test token endpoints share.

Every grant (an authorization code, or a refresh token seeded from outside) starts a *family*. A
refresh hands out a new refresh token and makes the old one worthless; presenting a refresh token that
is not its family's newest (it was used already) revokes the whole family, and every later use of the
family is refused too. :class:`~django_lightspeed_oauth.testing.FakeTokenEndpoint` (in-process, with
``responses``) and :class:`~django_lightspeed_oauth.testing.TokenServer` (a real HTTP server) both
answer from a :class:`TokenFamilies`.

Not thread-safe: the token server calls it with its own lock held.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass

from ..crypto import fingerprint

__all__ = ["Family", "InvalidGrant", "TokenFamilies", "fingerprint"]


@dataclass
class Family:
    """The refresh tokens descended from one grant (or one seeded token)."""

    id: int
    current: str
    refreshes: int = 0
    revoked: bool = False


class InvalidGrant(Exception):
    """A refresh token was refused; ``reused`` when it revoked (or belonged to) a revoked family."""

    def __init__(self, description: str, *, reused: bool) -> None:
        super().__init__(description)
        self.description = description
        self.reused = reused


class TokenFamilies:
    """Every refresh token issued or seeded, by token, with its family.

    ``accept_unknown``: a refresh token never issued nor seeded starts a family of its own (so the
    random tokens of :func:`~django_lightspeed_oauth.testing.make_company` work); otherwise it is
    refused. ``rotate`` off: a refresh keeps the family's refresh token (no new one is issued).
    """

    def __init__(self, *, prefix: str, accept_unknown: bool = True, rotate: bool = True) -> None:
        self.prefix = prefix
        self.accept_unknown = accept_unknown
        self.rotate = rotate
        self._ids = itertools.count(1)
        self._by_token: dict[str, Family] = {}

    def start(self, token: str = "") -> Family:
        """A new family, holding ``token`` (none yet for a fresh grant: :meth:`issue` gives one)."""
        family = Family(id=next(self._ids), current=token)
        if token:
            self._by_token[token] = family
        return family

    def seed(self, token: str) -> Family:
        """The family of ``token``, started with it when it is new."""
        return self._by_token.get(token) or self.start(token)

    def issue(self, family: Family) -> tuple[str, str | None]:
        """A new access token, and the family's new refresh token (None when it keeps its own)."""
        access = f"{self.prefix}-access-{secrets.token_urlsafe(16)}"
        if family.current and not self.rotate:
            return access, None
        refresh = f"{self.prefix}-refresh-{secrets.token_urlsafe(16)}"
        family.current = refresh
        self._by_token[refresh] = family
        return access, refresh

    def refresh(self, token: str) -> Family:
        """Use ``token`` once: the family to :meth:`issue` new tokens from, or :class:`InvalidGrant`."""
        family = self._by_token.get(token)
        if family is None:
            if not self.accept_unknown:
                raise InvalidGrant("unknown refresh token", reused=False)
            family = self.start(token)
        if family.revoked or token != family.current:
            family.revoked = True
            raise InvalidGrant("refresh token already used; grant revoked", reused=True)
        family.refreshes += 1
        return family

    def get(self, token: str) -> Family | None:
        return self._by_token.get(token)

    def by_fingerprint(self, token_fingerprint: str) -> Family | None:
        """The family of the refresh token (of any generation) with this fingerprint."""
        for token, family in self._by_token.items():
            if fingerprint(token) == token_fingerprint:
                return family
        return None

    def families(self) -> list[Family]:
        return list({family.id: family for family in self._by_token.values()}.values())
