"""Lightspeed's documented example answers, copied from its API references; the tests' source of truth.

Each constant names the page it was read from. Where a page documents the fields of an answer but shows
no complete example, the comment says so and the constant holds exactly the documented fields, with the
example values of that page where it gives any. Placeholder secrets are ours (``"..."`` in the docs).
Never change a shape here to make a test pass: change the code.
"""

from __future__ import annotations

import copy
from typing import Any

# --- Restaurant K-Series (V1 and V2 share the API) -------------------------------------------------

# https://api-docs.lsk.lightspeed.app/operation/operation-financial-api-getbusinesses
# (financial-api "Get Businesses", GET /f/data/businesses, paginated with `page` (default 0) and
# `size` (default 1000)). The documented example answer, verbatim but for the elided self link:
K_SERIES_BUSINESSES: dict[str, Any] = {
    "_embedded": {
        "businessList": [
            {
                "businessName": "My Business",
                "businessId": 1234,
                "currencyCode": "GBP",
                "businessLocations": [
                    {
                        "blName": "My Business Location 1",
                        "blID": 1234567890,
                        "country": "GB",
                        "timezone": "Europe/London",
                    }
                ],
            }
        ]
    },
    "_links": {"self": {"href": "https://api.lsk.lightspeed.app/f/data/businesses?page=0&size=1000"}},
}


def k_series_businesses(*businesses: tuple[int, str, list[tuple[int, str]]]) -> dict[str, Any]:
    """The documented answer with other businesses in it (same keys, same nesting)."""
    answer = copy.deepcopy(K_SERIES_BUSINESSES)
    template = answer["_embedded"]["businessList"][0]
    location_template = template["businessLocations"][0]
    answer["_embedded"]["businessList"] = [
        {
            **template,
            "businessId": business_id,
            "businessName": name,
            "businessLocations": [
                {**location_template, "blID": bl_id, "blName": bl_name} for bl_id, bl_name in locations
            ],
        }
        for business_id, name, locations in businesses
    ]
    return answer


# https://api-portal.lsk.lightspeed.app/quick-start/authentication/authorization (V1: "Access tokens
# expire after 60 minutes", "Refresh tokens expire after 14 days", "can only be used once") and the
# Authorization Overview, which names the answer's fields (access_token, refresh_token and their
# expiry, as an OAuth2 token answer: RFC 6749 section 5.1). The page shows no complete JSON example.
K_SERIES_V1_TOKEN: dict[str, Any] = {
    "access_token": "k1-access",
    "token_type": "bearer",
    "expires_in": 3600,
    "refresh_token": "k1-refresh",
    "scope": "financial-api orders-api",
}

# https://api-portal.lsk.lightspeed.app/quick-start/authentication/v2-authentication/v2-authorization-overview
# (V2, Keycloak): `expires_in` and `refresh_expires_in`, the latter 0 when `offline_access` was granted.
K_SERIES_V2_TOKEN: dict[str, Any] = {
    "access_token": "k2-access",
    "expires_in": 3600,
    "refresh_expires_in": 0,
    "refresh_token": "k2-refresh",
    "token_type": "Bearer",
    "scope": "offline_access financial-api orders-api",
}

# --- Retail X-Series ------------------------------------------------------------------------------

# https://x-series-api.lightspeedhq.com/changelog/2025-03-refresh-token-flow-update ("Response
# Example" of POST https://{domain_prefix}.retail.lightspeed.app/api/1.0/token), verbatim; the code
# exchange answers in the same shape (https://x-series-api.lightspeedhq.com/docs/authorization).
X_SERIES_TOKEN: dict[str, Any] = {
    "access_token": "KD7gspXvfAmOsspC65YDqqJQ6FcAYbRROc4zPIMZ",
    "token_type": "Bearer",
    "expires": 1387145621,
    "expires_in": 604800,
    "refresh_token": "new_refresh_token",
    "domain_prefix": "domain_prefix",
    "scope": "",
}

# https://x-series-api.lightspeedhq.com/reference/retailer (GET /api/2.0/retailer, scope
# `retailer:read`): the retailer under `data`; `id` is its UUID. Only the three fields we read are kept.
X_SERIES_RETAILER: dict[str, Any] = {
    "data": {
        "id": "06e94082-ed4a-11ee-f619-b7d2a5d3a1b0",
        "name": "Harbour Bistro",
        "domain_prefix": "domain_prefix",
    }
}

# --- Retail R-Series ------------------------------------------------------------------------------

# https://developers.lightspeedhq.com/retail/authentication/access-token/ : the token answer.
R_SERIES_TOKEN: dict[str, Any] = {
    "access_token": "r-access",
    "expires_in": 3600,
    "token_type": "bearer",
    "scope": "employee:all",
    "refresh_token": "r-refresh",
}

# https://developers.lightspeedhq.com/retail/endpoints/Account/ (GET /API/V3/Account.json: the
# account of the token, whose accountID every other call's URL needs). Only the fields we read are kept.
R_SERIES_ACCOUNT: dict[str, Any] = {
    "@attributes": {"count": "1"},
    "Account": {"accountID": "12345", "name": "Harbour Cycles"},
}

# --- Restaurant O-Series (Kounta) -----------------------------------------------------------------

# https://apidoc.kounta.com/authentication/ (token URL https://api.kounta.com/v1/token; access tokens
# last an hour). The page names the fields; it shows no complete example.
O_SERIES_TOKEN: dict[str, Any] = {
    "access_token": "o-access",
    "expires_in": 3600,
    "token_type": "bearer",
    "refresh_token": "o-refresh",
}

# https://apidoc.kounta.com/companies/ (GET /v1/companies/me): the company the token was granted for.
O_SERIES_COMPANY: dict[str, Any] = {"id": 5678, "name": "Harbour Bistro"}

# --- Vendors (accounts.lightspeed.app) -------------------------------------------------------------

# Lightspeed's Vendors authentication guide (seed 004: POST https://accounts.lightspeed.app/oauth/token
# with code_verifier; "you will be given back your access_token and refresh_token"); scopes
# `openid profile offline_access`; access tokens last 15 minutes. No complete example is shown.
VENDORS_TOKEN: dict[str, Any] = {
    "access_token": "v-access",
    "expires_in": 900,
    "token_type": "Bearer",
    "refresh_token": "v-refresh",
    "scope": "openid profile offline_access",
}


def shape(value: Any) -> Any:
    """The keys and value types of an answer, to compare two answers' shapes."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__
