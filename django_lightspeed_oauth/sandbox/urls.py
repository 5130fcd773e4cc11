"""URLs of the sandbox servers, one set per flavour, laid out as Lightspeed lays out its own."""

from __future__ import annotations

from django.urls import path

from .views import AuthorizeView, IdentityView, IndexView, TokenView

# Development and test sites only: the views answer 404 unless DEBUG or SANDBOX_ENABLED, the switches
# on the index page are for staff (check lightspeed_sandbox.E001 keeps the app off production sites).
app_name = "lightspeed_sandbox"

urlpatterns = [
    path("", IndexView.as_view(), name="index"),
    # Restaurant K-Series V1: token parameters in the query string, Basic client authentication.
    path(
        "k-series/oauth/authorize", AuthorizeView.as_view(flavour_slug="k-series"), name="k-series-authorize"
    ),
    path("k-series/oauth/token", TokenView.as_view(flavour_slug="k-series"), name="k-series-token"),
    path(
        "k-series/f/data/businesses", IdentityView.as_view(flavour_slug="k-series"), name="k-series-identity"
    ),
    # Restaurant K-Series V2 (Keycloak).
    path(
        "k-series-v2/realms/k-series/protocol/openid-connect/auth",
        AuthorizeView.as_view(flavour_slug="k-series-v2"),
        name="k-series-v2-authorize",
    ),
    path(
        "k-series-v2/realms/k-series/protocol/openid-connect/token",
        TokenView.as_view(flavour_slug="k-series-v2"),
        name="k-series-v2-token",
    ),
    path(
        "k-series-v2/f/data/businesses",
        IdentityView.as_view(flavour_slug="k-series-v2"),
        name="k-series-v2-identity",
    ),
    # Restaurant O-Series (Kounta).
    path("o-series/authorize", AuthorizeView.as_view(flavour_slug="o-series"), name="o-series-authorize"),
    path("o-series/v1/token", TokenView.as_view(flavour_slug="o-series"), name="o-series-token"),
    path(
        "o-series/v1/companies/me",
        IdentityView.as_view(flavour_slug="o-series"),
        name="o-series-identity",
    ),
    # Retail R-Series.
    path(
        "retail-r/auth/oauth/authorize",
        AuthorizeView.as_view(flavour_slug="retail-r"),
        name="retail-r-authorize",
    ),
    path("retail-r/auth/oauth/token", TokenView.as_view(flavour_slug="retail-r"), name="retail-r-token"),
    path(
        "retail-r/API/V3/Account.json",
        IdentityView.as_view(flavour_slug="retail-r"),
        name="retail-r-identity",
    ),
    # Retail X-Series (Vend): the token and API hosts are the store's own, here a path segment.
    path("retail-x/connect", AuthorizeView.as_view(flavour_slug="retail-x"), name="retail-x-authorize"),
    path(
        "retail-x/<str:domain_prefix>/api/1.0/token",
        TokenView.as_view(flavour_slug="retail-x"),
        name="retail-x-token",
    ),
    path(
        "retail-x/<str:domain_prefix>/api/2.0/retailer",
        IdentityView.as_view(flavour_slug="retail-x"),
        name="retail-x-identity",
    ),
    # Vendors / Supplier catalog (accounts.lightspeed.app).
    path("vendors/authorize", AuthorizeView.as_view(flavour_slug="vendors"), name="vendors-authorize"),
    path("vendors/oauth/token", TokenView.as_view(flavour_slug="vendors"), name="vendors-token"),
    path("vendors/userinfo", IdentityView.as_view(flavour_slug="vendors"), name="vendors-identity"),
]
