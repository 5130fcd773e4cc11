"""What each sandbox server imitates: one Lightspeed OAuth flavour's rules and demo companies."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FLAVOURS", "DemoCompany", "Flavour", "get_flavour"]

#: A token request proves the client with an HTTP Basic header ...
BASIC = "basic"
#: ... or with ``client_id`` and ``client_secret`` in the form body.
BODY = "body"

#: Lightspeed documents 14 days for K-Series (V1) refresh tokens. No other flavour documents a
#: refresh token lifetime, so their sandbox refresh tokens do not expire.
FOURTEEN_DAYS = 14 * 24 * 3600


@dataclass(frozen=True)
class DemoCompany:
    """A merchant account the consent page offers (a business, company, account or store)."""

    id: str
    name: str
    domain_prefix: str = ""
    #: K-Series: the ids of the other businesses the user who authorizes as this company can see
    #: (a token covers every business its user sees).
    also_sees: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flavour:
    """The rules of one Lightspeed authorization server, as its documentation describes them."""

    slug: str
    label: str
    client_auth: str
    identity: Callable[[DemoCompany], Any]
    companies: tuple[DemoCompany, ...]
    #: K-Series V1 takes grant_type, code, redirect_uri and refresh_token in the URL query, not the body.
    token_params_in_query: bool = False
    #: Each refresh issues a new refresh token and retires the old one.
    rotates_refresh_tokens: bool = True
    #: Seconds a refresh token lives; ``None``: no lifetime is documented, so it does not expire here.
    refresh_token_lifetime: int | None = None
    pkce_required: bool = False
    #: A regular expression the whole ``state`` must match, and the sentence that explains it.
    state_pattern: str = ""
    state_rule: str = ""
    #: Retail R-Series answers a JSON body, or a ``scope`` on a refresh, with invalid_grant.
    strict_form_body: bool = False
    #: Retail X-Series rejects client credentials in the query string.
    rejects_query_credentials: bool = False
    #: The callback and token responses carry the store's ``domain_prefix`` (Retail X-Series).
    uses_domain_prefix: bool = False
    #: Keycloak (K-Series V2) reports ``refresh_expires_in``.
    reports_refresh_expires_in: bool = False
    #: An OpenID Connect server: ``openid`` in the scope adds an ``id_token``.
    issues_id_token: bool = False
    #: Retail X-Series answers an authorization request without ``scope`` with access_denied.
    requires_scope: bool = False
    #: A scope the identity endpoint needs (Retail X-Series' retailer endpoint: retailer:read).
    identity_scope: str = ""
    #: The token_type the token endpoint writes.
    token_type: str = "bearer"

    def company(self, company_id: str) -> DemoCompany | None:
        return next((company for company in self.companies if company.id == company_id), None)

    def visible_companies(self, company: DemoCompany) -> list[DemoCompany]:
        """The company and every other one its authorizing user can see."""
        known = self.company(company.id)
        others = [self.company(other) for other in (known.also_sees if known else ())]
        return [company, *(other for other in others if other is not None)]

    def state_is_valid(self, state: str) -> bool:
        return not self.state_pattern or re.fullmatch(self.state_pattern, state) is not None


def _companies(*ids: str, domain_prefixes: tuple[str, ...] = ("", "", "")) -> tuple[DemoCompany, ...]:
    names = ("Harbour Bistro", "Corner Café", "Northside Deli")
    return tuple(
        DemoCompany(id, name, prefix) for id, name, prefix in zip(ids, names, domain_prefixes, strict=False)
    )


def _k_series_companies(*ids: str) -> tuple[DemoCompany, ...]:
    # The second demo user sees two businesses, as a K-Series owner of two restaurants does.
    first, second, third = _companies(*ids)
    return (first, DemoCompany(second.id, second.name, also_sees=(third.id,)), third)


def k_series_business(company: DemoCompany) -> dict[str, Any]:
    """One entry of "Get Businesses" (api-docs.lsk.lightspeed.app, financial-api getBusinesses)."""
    business_id = int(company.id)
    return {
        "businessName": company.name,
        "businessId": business_id,
        "currencyCode": "GBP",
        "businessLocations": [
            {
                "blName": f"{company.name} Location 1",
                "blID": business_id * 100000 + 1,
                "country": "GB",
                "timezone": "Europe/London",
            }
        ],
    }


def _k_series_identity(company: DemoCompany) -> Any:
    return k_series_business(company)


FLAVOURS: dict[str, Flavour] = {
    flavour.slug: flavour
    for flavour in (
        Flavour(
            slug="k-series",
            label="Restaurant K-Series",
            client_auth=BASIC,
            token_params_in_query=True,
            refresh_token_lifetime=FOURTEEN_DAYS,
            identity=_k_series_identity,
            companies=_k_series_companies("41001", "41002", "41003"),
        ),
        Flavour(
            slug="k-series-v2",
            label="Restaurant K-Series V2",
            client_auth=BASIC,
            reports_refresh_expires_in=True,
            identity=_k_series_identity,
            companies=_k_series_companies("42001", "42002", "42003"),
        ),
        Flavour(
            slug="o-series",
            label="Restaurant O-Series",
            client_auth=BODY,
            rotates_refresh_tokens=False,
            identity=lambda company: {"id": int(company.id), "name": company.name},
            companies=_companies("53001", "53002", "53003"),
        ),
        Flavour(
            slug="retail-r",
            label="Retail R-Series",
            client_auth=BODY,
            strict_form_body=True,
            identity=lambda company: {
                "@attributes": {"count": "1"},
                "Account": {"accountID": company.id, "name": company.name},
            },
            companies=_companies("64001", "64002", "64003"),
        ),
        Flavour(
            slug="retail-x",
            label="Retail X-Series",
            client_auth=BODY,
            state_pattern=r".{8,}",
            state_rule="state is required and must be at least 8 characters long.",
            rejects_query_credentials=True,
            uses_domain_prefix=True,
            requires_scope=True,
            identity_scope="retailer:read",
            token_type="Bearer",
            identity=lambda company: {
                "data": {"id": company.id, "name": company.name, "domain_prefix": company.domain_prefix}
            },
            companies=_companies(
                "0a4b7c31-5f6e-11ec-8a2d-000000000001",
                "0a4b7c31-5f6e-11ec-8a2d-000000000002",
                "0a4b7c31-5f6e-11ec-8a2d-000000000003",
                domain_prefixes=("harbourbistro", "cornercafe", "northsidedeli"),
            ),
        ),
        Flavour(
            slug="vendors",
            label="Vendors (accounts.lightspeed.app)",
            client_auth=BASIC,
            pkce_required=True,
            state_pattern=r"[A-Za-z0-9]{20,}",
            state_rule="state is required and must be at least 20 letters and digits.",
            issues_id_token=True,
            identity=lambda company: {"sub": company.id, "name": company.name},
            companies=_companies(
                "7d1e2f30-0000-4000-8000-000000000001",
                "7d1e2f30-0000-4000-8000-000000000002",
                "7d1e2f30-0000-4000-8000-000000000003",
            ),
        ),
    )
}


def get_flavour(slug: str) -> Flavour:
    """Return the flavour called ``slug``; raise ``KeyError`` naming the known ones when there is none."""
    try:
        return FLAVOURS[slug]
    except KeyError:
        raise KeyError(f"Unknown sandbox flavour {slug!r}; expected one of {', '.join(FLAVOURS)}") from None
