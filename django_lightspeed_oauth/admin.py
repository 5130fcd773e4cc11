"""Admin pages for API clients, connected companies, authorization requests and token events.

Secrets never reach a page: client secrets are write-only, tokens and PKCE verifiers are shown as
fingerprints or not at all, and states only cut short.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import django
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Count, F, Q, QuerySet
from django.forms import BaseInlineFormSet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    QueryDict,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.formats import date_format
from django.utils.functional import Promise
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.debug import sensitive_post_parameters

from . import tokens
from .conf import app_settings
from .exceptions import DecryptionError, LightspeedOAuthError
from .forms import ApiClientAdminForm, CompanyInvitationForm, InvitationAdminForm, InvitationForm
from .mail import company_invitation_url, invitation_address, send_invitation
from .models import ApiClient, AuthorizationRequest, ConnectedCompany, Invitation, Overview, TokenEvent
from .overview import overview_context
from .providers import provider_choices, provider_classes

__all__ = [
    "ApiClientAdmin",
    "AuthorizationRequestAdmin",
    "ConnectedCompanyAdmin",
    "InvitationAdmin",
    "OverviewAdmin",
    "TokenEventAdmin",
    "humanize_expiry",
]

Status = ConnectedCompany.Status

#: How many of a company's newest token events its change page shows.
RECENT_EVENTS = 50


def _fingerprint_shown(obj: Any, name: str) -> str:
    """A secret's fingerprint, or "cannot decrypt" (with why) for a row this process cannot read."""
    try:
        return getattr(obj, name)
    except DecryptionError as err:
        # The reason names the row and the setting, never a secret.
        return format_html(
            '<span class="ls-undecryptable" title="{}">{}</span>', err.message, _("cannot decrypt")
        )


def _duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 60:
        return _("%(n)d s") % {"n": seconds}
    minutes = seconds // 60
    if minutes < 60:
        return _("%(n)d min") % {"n": minutes}
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        if minutes:
            return _("%(h)d h %(m)d min") % {"h": hours, "m": minutes}
        return _("%(h)d h") % {"h": hours}
    days = hours // 24
    return ngettext("%(n)d day", "%(n)d days", days) % {"n": days}


def humanize_expiry(expires_at: datetime | None, now: datetime | None = None) -> str:
    """``"in 54 min"`` or ``"expired 3 min ago"``; empty when there is no expiry."""
    if expires_at is None:
        return ""
    delta = (expires_at - (now or timezone.now())).total_seconds()
    if delta > 0:
        return _("in %(duration)s") % {"duration": _duration(delta)}
    return _("expired %(duration)s ago") % {"duration": _duration(delta)}


def _provider_name(key: str) -> str:
    cls = provider_classes().get(key)
    return cls.name if cls else key


def _callback_url(request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("lightspeed_oauth:callback"))


def _can_connect(request: HttpRequest) -> bool:
    return request.user.has_perm(app_settings.CONNECT_PERMISSION)


def _absolute_invitation_url(request: HttpRequest, token: str) -> str:
    url = Invitation.url_for(token)
    return url if "://" in url else request.build_absolute_uri(url)


class NulFreeChangeListMixin:
    """A list whose search or filters hold a NUL character answers 400.

    PostgreSQL cannot compare text with a NUL, so such a filter (``?status=%00``) would otherwise
    fail as a server error when the list is read.
    """

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        if has_nul(request.GET):
            message = str(_("A search or filter of this list contains a NUL character."))
            return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


def has_nul(data: QueryDict) -> bool:
    """Whether any key or value of a query or form holds a NUL character."""
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in data.lists())


# API clients --------------------------------------------------------------------------------


def _annotated(obj: models.Model, name: str) -> int:
    """A count the changelist's queryset annotated onto ``obj``."""
    return int(getattr(obj, name))


class ProviderFilter(admin.SimpleListFilter):
    """Providers by display name (the column holds keys)."""

    title = _("provider")
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return provider_choices()

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(provider=value) if value else queryset


@admin.register(ApiClient)
class ApiClientAdmin(NulFreeChangeListMixin, admin.ModelAdmin):
    form = ApiClientAdminForm
    list_display = [
        "name",
        "provider_name",
        "environment",
        "client_id",
        "connected_count",
        "active_count",
        "failing_count",
        "reauthorization_count",
        "credentials_state",
        "is_active",
    ]
    list_filter = [ProviderFilter, "environment", "is_active"]
    search_fields = ["name", "slug", "client_id"]
    prepopulated_fields = {"slug": ["name"]}
    if django.VERSION >= (5, 0):
        # Redirect URIs are https; say so before Django 6 makes it the default.
        formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = [
        "client_secret_fingerprint",
        "redirect_uri_to_register",
        "provider_notes",
        "credentials_refusal",
        "created_at",
        "updated_at",
    ]

    def get_fieldsets(self, request: HttpRequest, obj: ApiClient | None = None) -> list:
        credentials = [
            "client_id",
            "client_secret",
            "client_secret_fingerprint",
            "redirect_uri",
            "redirect_uri_to_register",
        ]
        provider = ["scopes", "authorize_url", "token_url", "provider_options", "provider_notes"]
        if obj is None:
            # Nothing stored yet: no fingerprint, and redirect_uri starts as the callback URL.
            credentials = [
                f for f in credentials if f not in ("client_secret_fingerprint", "redirect_uri_to_register")
            ]
            provider.remove("provider_notes")
        elif not self.has_change_permission(request, obj):
            # View-only pages show every field read-only, reading it from the model: the
            # secret itself must not be one of them.
            credentials.remove("client_secret")
        if obj is not None and obj.credentials_refused_at:
            credentials.insert(0, "credentials_refusal")
        fieldsets = [
            (None, {"fields": ["name", "slug", "provider", "environment", "is_active"]}),
            (_("Credentials"), {"fields": credentials}),
            (_("Scopes and endpoints"), {"fields": provider}),
        ]
        if obj is not None:
            fieldsets.append(
                (_("History"), {"fields": ["created_at", "updated_at"], "classes": ["collapse"]})
            )
        return fieldsets

    def get_form(
        self, request: HttpRequest, obj: ApiClient | None = None, change: bool = False, **kwargs: Any
    ):
        fields = kwargs.get("fields")
        if fields is None:
            fields = [f for _name, options in self.get_fieldsets(request, obj) for f in options["fields"]]
        # client_secret is a form-only field: the model field is not editable, by design.
        kwargs["fields"] = [f for f in fields if f != "client_secret"]
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiClient, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        advice = obj.scope_warning()
        if advice:
            self.message_user(request, advice, messages.WARNING)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("redirect_uri", _callback_url(request))
        return initial

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            # Display methods only get the object; the callback's absolute URL needs the request.
            obj._admin_callback_url = _callback_url(request)
        return obj

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiClient]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                connected_count=Count("companies", filter=~Q(companies__status=Status.DISCONNECTED)),
                active_count=Count("companies", filter=Q(companies__status=Status.ACTIVE)),
                failing_count=Count("companies", filter=Q(companies__status=Status.FAILING)),
                reauthorization_count=Count(
                    "companies", filter=Q(companies__status=Status.REAUTHORIZATION_REQUIRED)
                ),
            )
        )

    # Columns ------------------------------------------------------------------------------

    @admin.display(description=_("provider"), ordering="provider")
    def provider_name(self, obj: ApiClient) -> str:
        return _provider_name(obj.provider)

    def _companies_link(self, obj: ApiClient, count: int, status: str | None) -> str:
        if not count:
            return "0"
        query: dict[str, Any] = {"client__id__exact": obj.pk}
        if status:
            query["status__exact"] = status
        url = reverse("admin:lightspeed_oauth_connectedcompany_changelist")
        return format_html('<a href="{}?{}">{}</a>', url, urlencode(query), count)

    @admin.display(description=_("connected"), ordering="connected_count")
    def connected_count(self, obj: ApiClient) -> int:
        # Every company but the disconnected ones (no single list filter shows that, so no link).
        return _annotated(obj, "connected_count")

    @admin.display(description=_("active companies"), ordering="active_count")
    def active_count(self, obj: ApiClient) -> str:
        return self._companies_link(obj, _annotated(obj, "active_count"), Status.ACTIVE)

    @admin.display(description=_("failing"), ordering="failing_count")
    def failing_count(self, obj: ApiClient) -> str:
        return self._companies_link(obj, _annotated(obj, "failing_count"), Status.FAILING)

    @admin.display(description=_("re-authorization required"), ordering="reauthorization_count")
    def reauthorization_count(self, obj: ApiClient) -> str:
        return self._companies_link(
            obj, _annotated(obj, "reauthorization_count"), Status.REAUTHORIZATION_REQUIRED
        )

    @admin.display(description=_("credentials"), ordering="credentials_refused_at")
    def credentials_state(self, obj: ApiClient) -> str:
        if obj.credentials_refused_at:
            return format_html('<strong style="color:#ba2121">{}</strong>', _("refused by Lightspeed"))
        return str(_("ok"))

    # Read-only fields -----------------------------------------------------------------------

    @admin.display(description=_("credentials refused"))
    def credentials_refusal(self, obj: ApiClient) -> str:
        return format_html(
            '<strong style="color:#ba2121">{}</strong><br>{}<br>{}',
            _("Lightspeed refused this client's credentials on %(when)s; its companies are not refreshed.")
            % {"when": date_format(timezone.localtime(obj.credentials_refused_at), "DATETIME_FORMAT")},
            obj.credentials_error,
            _("Correct the client id, secret or endpoints and save: refreshing resumes."),
        )

    @admin.display(description=_("stored secret"))
    def client_secret_fingerprint(self, obj: ApiClient) -> str:
        return _fingerprint_shown(obj, "client_secret_fingerprint") or str(_("(none)"))

    @admin.display(description=_("Redirect URI to register"))
    def redirect_uri_to_register(self, obj: ApiClient) -> str:
        url = getattr(obj, "_admin_callback_url", "") or reverse("lightspeed_oauth:callback")
        hint: str | Promise = ""
        if obj.redirect_uri and obj.redirect_uri != url:
            hint = _(
                "The redirect URI above is different: Lightspeed sends merchants back only "
                "to the exact URI registered."
            )
        return format_html(
            '<input type="text" id="redirect-uri-to-register" class="vTextField" readonly '
            'value="{}" onfocus="this.select()"> '
            '<button type="button" class="button" id="copy-redirect-uri" '
            'data-copy="redirect-uri-to-register">'
            '{}</button><div class="help">{}</div>'
            '<div class="help">{}</div>',
            url,
            _("Copy"),
            _("This site's callback URL: register it with Lightspeed for this client."),
            hint,
        )

    @admin.display(description=_("provider notes"))
    def provider_notes(self, obj: ApiClient) -> str:
        cls = provider_classes().get(obj.provider)
        return cls.notes if cls else str(_("Unknown provider."))

    # Invitation links -------------------------------------------------------------------------

    def get_urls(self) -> list:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/invitation/",
                self.admin_site.admin_view(self.invitation_view),
                name="{}_{}_invitation".format(*info),
            ),
            *super().get_urls(),
        ]

    @method_decorator(sensitive_post_parameters("client_secret"))
    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # The add and change forms post the client secret: keep it out of Django's error reports.
        return super().changeform_view(request, object_id, form_url, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_connect": _can_connect(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def invitation_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Create a signed link a merchant can open, without a login, to connect."""
        client = self.get_object(request, object_id)
        if client is None:
            # What ModelAdmin's own views do (its helper for it is private): Django's message, whose
            # translations Django ships, and the admin index.
            msg = _("%(name)s with ID “%(key)s” doesn’t exist. Perhaps it was deleted?") % {  # noqa: RUF001
                "name": self.opts.verbose_name,
                "key": unquote(object_id),
            }
            self.message_user(request, msg, messages.WARNING)
            return HttpResponseRedirect(reverse("admin:index", current_app=self.admin_site.name))
        if not (self.has_view_or_change_permission(request, client) and _can_connect(request)):
            raise PermissionDenied
        invitation_url = expires_at = None
        if request.method == "POST":
            form = InvitationForm(request.POST)
            if form.is_valid():
                if not client.is_active:
                    form.add_error(
                        None,
                        _("This API client is not active: activate it first, or the link will not work."),
                    )
                else:
                    invitation, token = Invitation.objects.create_for(
                        client,
                        reference=form.cleaned_data["reference"],
                        max_age=form.max_age,
                        max_uses=form.cleaned_data["max_uses"],
                        created_by=request.user,
                    )
                    invitation_url = _absolute_invitation_url(request, token)
                    expires_at = invitation.expires_at
        else:
            form = InvitationForm()
        context = {
            **self.admin_site.each_context(request),
            "title": _("Invitation link for %(client)s") % {"client": client},
            "subtitle": None,
            "opts": self.opts,
            "original": client,
            "form": form,
            "invitation_url": invitation_url,
            "expires_at": expires_at,
            "has_view_permission": self.has_view_permission(request, client),
            "has_change_permission": self.has_change_permission(request, client),
        }
        return TemplateResponse(request, "admin/lightspeed_oauth/apiclient/invitation.html", context)


# Connected companies --------------------------------------------------------------------------


class ReadOnlyMixin:
    """Viewable, never added, changed or deleted from the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TokenEventFormSet(BaseInlineFormSet):
    def get_queryset(self) -> QuerySet[TokenEvent]:
        # A company refreshed hourly has thousands of events: show the newest only.
        if not hasattr(self, "_queryset"):
            self._queryset = super().get_queryset()[:RECENT_EVENTS]
        return self._queryset


def _event_details(obj: TokenEvent) -> str:
    """A token event's details as "name: value" lines instead of raw JSON."""
    details = obj.details if isinstance(obj.details, dict) else {}
    lines = [
        (str(key).replace("_", " "), "-" if value in (None, "") else value) for key, value in details.items()
    ]
    if not lines:
        return "-"
    return format_html_join(mark_safe("<br>"), '<span class="ls-detail">{}: {}</span>', lines)


def _event_actor(obj: TokenEvent) -> str:
    """Who triggered a token event: a staff member (the admin's buttons), or the app on its own."""
    if obj.actor_id is None:
        return str(_("automatic"))
    return str(obj.actor)


class TokenEventInline(ReadOnlyMixin, admin.TabularInline):
    model = TokenEvent
    formset = TokenEventFormSet
    fields = readonly_fields = ("created_at", "kind", "message", "triggered_by", "details_text")
    ordering = ["-created_at", "-pk"]
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False
    verbose_name_plural = _("recent token events")

    def get_queryset(self, request: HttpRequest) -> QuerySet[TokenEvent]:
        return super().get_queryset(request).select_related("actor")

    @admin.display(description=_("by"))
    def triggered_by(self, obj: TokenEvent) -> str:
        return _event_actor(obj)

    @admin.display(description=_("details"))
    def details_text(self, obj: TokenEvent) -> str:
        return _event_details(obj)


@admin.register(ConnectedCompany)
class ConnectedCompanyAdmin(NulFreeChangeListMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "company_id",
        "client",
        "status_badge",
        "expires_in",
        "last_refreshed_at",
        "failure_count",
    ]
    list_display_links = ["name", "company_id"]
    list_filter = ["client", "status"]
    search_fields = ["name", "company_id", "reference"]
    list_select_related = ["client"]
    raw_id_fields = ["connected_by"]
    actions = ["refresh_now", "disconnect"]
    inlines = [TokenEventInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "reference",
                    "client",
                    "company_id",
                    "status_badge",
                    "connected_at",
                    "connected_by",
                ]
            },
        ),
        (
            _("Tokens"),
            {
                "fields": [
                    "access_token_fingerprint",
                    "refresh_token_fingerprint",
                    "token_type",
                    "granted_scopes",
                    "expires_at",
                    "expires_in",
                    "refresh_expires_at",
                    "last_refreshed_at",
                ]
            },
        ),
        (_("Health"), {"fields": ["failure_count", "last_error", "next_attempt_at", "token_events_link"]}),
        (_("Details"), {"fields": ["details", "created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "client",
        "company_id",
        "status_badge",
        "connected_at",
        "connected_by",
        "access_token_fingerprint",
        "refresh_token_fingerprint",
        "token_type",
        "granted_scopes",
        "expires_at",
        "expires_in",
        "refresh_expires_at",
        "last_refreshed_at",
        "failure_count",
        "last_error",
        "next_attempt_at",
        "token_events_link",
        "details",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Companies are created by the authorization flow only.
        return False

    # A company's own page: Refresh now, Disconnect, Send a new invitation ------------------------

    def get_urls(self) -> list:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/refresh/",
                self.admin_site.admin_view(self.refresh_view),
                name="{}_{}_refresh".format(*info),
            ),
            path(
                "<path:object_id>/disconnect/",
                self.admin_site.admin_view(self.disconnect_view),
                name="{}_{}_disconnect".format(*info),
            ),
            path(
                "<path:object_id>/invitation/",
                self.admin_site.admin_view(self.invitation_view),
                name="{}_{}_invitation".format(*info),
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        company = self.get_object(request, object_id)
        extra_context = {
            **(extra_context or {}),
            "can_act": company is not None and self.has_change_permission(request, company),
            "can_invite": company is not None and self._can_invite(request, company),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def _can_invite(self, request: HttpRequest, company: ConnectedCompany) -> bool:
        return (
            company.status in (Status.REAUTHORIZATION_REQUIRED, Status.DISCONNECTED)
            and self.has_change_permission(request, company)
            and _can_connect(request)
        )

    def _company_or_404(self, request: HttpRequest, object_id: str) -> ConnectedCompany:
        company = self.get_object(request, object_id)
        if company is None:
            raise Http404(_("No such connected company."))
        return company

    def _back(self, company: ConnectedCompany) -> HttpResponseRedirect:
        info = self.opts.app_label, self.opts.model_name
        return HttpResponseRedirect(reverse("admin:{}_{}_change".format(*info), args=[company.pk]))

    def refresh_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: refresh this company now (as the list's action), then back to its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        company = self._company_or_404(request, object_id)
        if not self.has_change_permission(request, company):
            raise PermissionDenied
        self.refresh_now(request, ConnectedCompany.objects.filter(pk=company.pk))
        return self._back(company)

    def disconnect_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Ask, then disconnect this company (as the list's action), then back to its page."""
        company = self._company_or_404(request, object_id)
        if not self.has_change_permission(request, company):
            raise PermissionDenied
        response = self.disconnect(request, ConnectedCompany.objects.filter(pk=company.pk))
        return response if response is not None else self._back(company)

    def invitation_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A new invitation link for a company that must connect again: shown, and e-mailed on request."""
        company = self._company_or_404(request, object_id)
        if not self._can_invite(request, company):
            raise PermissionDenied
        client = company.client
        invitation_url = expires_at = None
        if request.method == "POST":
            form = CompanyInvitationForm(request.POST)
            if form.is_valid():
                if not client.is_active:
                    form.add_error(
                        None,
                        _("This API client is not active: activate it first, or the link will not work."),
                    )
                else:
                    address = form.cleaned_data["email"]
                    invitation_url = company_invitation_url(
                        company,
                        max_age=form.max_age,
                        base_url=request.build_absolute_uri("/"),
                        created_by=request.user,
                        email=address,
                    )
                    expires_at = timezone.now() + timedelta(seconds=form.max_age)
                    if address:
                        try:
                            send_invitation(
                                client,
                                invitation_url,
                                address,
                                max_age=form.max_age,
                                company_name=company.name or company.company_id,
                            )
                        except Exception as err:  # the mail backend's errors, whatever they are
                            self.message_user(
                                request,
                                _(
                                    "The e-mail to %(address)s could not be sent (%(error)s); "
                                    "copy the link instead."
                                )
                                % {"address": address, "error": err},
                                messages.ERROR,
                            )
                        else:
                            self.message_user(
                                request,
                                _(
                                    "%(company)s (%(client)s): a new invitation link was e-mailed "
                                    "to %(address)s."
                                )
                                % {"company": company, "client": client, "address": address},
                                messages.SUCCESS,
                            )
        else:
            form = CompanyInvitationForm(initial={"email": invitation_address(company)})
        context = {
            **self.admin_site.each_context(request),
            "title": _("New invitation for %(company)s") % {"company": company},
            "subtitle": None,
            "opts": self.opts,
            "original": company,
            "client": client,
            "form": form,
            "invitation_url": invitation_url,
            "expires_at": expires_at,
            "has_view_permission": self.has_view_permission(request, company),
            "has_change_permission": self.has_change_permission(request, company),
        }
        return TemplateResponse(request, "admin/lightspeed_oauth/connectedcompany/invitation.html", context)

    # Columns ------------------------------------------------------------------------------

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: ConnectedCompany) -> str:
        badge = format_html(
            '<span class="ls-status ls-status-{}">{}</span>', obj.status, obj.get_status_display()
        )
        problem = obj.undecryptable_reason()
        if problem:
            # A key this process lacks (or a value that fails its check): say so rather than crash.
            badge = format_html(
                '{} <strong class="ls-expired ls-undecryptable" title="{}">{}</strong>',
                badge,
                problem,
                _("cannot decrypt"),
            )
        return badge

    @admin.display(description=_("Expires in"), ordering="expires_at")
    def expires_in(self, obj: ConnectedCompany) -> str:
        text = humanize_expiry(obj.expires_at)
        if text and obj.is_expired():
            return format_html('<span class="ls-expired">{}</span>', text)
        return text

    @admin.display(description=_("access token"))
    def access_token_fingerprint(self, obj: ConnectedCompany) -> str:
        return _fingerprint_shown(obj, "access_token_fingerprint")

    @admin.display(description=_("refresh token"))
    def refresh_token_fingerprint(self, obj: ConnectedCompany) -> str:
        return _fingerprint_shown(obj, "refresh_token_fingerprint")

    @admin.display(description=_("history"))
    def token_events_link(self, obj: ConnectedCompany) -> str:
        if obj._state.adding:  # not saved yet: no history
            return ""
        url = reverse("admin:lightspeed_oauth_tokenevent_changelist")
        return format_html(
            '<a href="{}?{}">{}</a>',
            url,
            urlencode({"company__id__exact": obj.pk}),
            _("All token events of this company"),
        )

    # Actions --------------------------------------------------------------------------------

    @admin.action(description=_("Refresh now"), permissions=["change"])
    def refresh_now(self, request: HttpRequest, queryset: QuerySet[ConnectedCompany]) -> None:
        for company in queryset.select_related("client"):
            try:
                with tokens.acting_as(request.user):  # the token events name who asked
                    result = tokens.refresh(company, force=True)
            except LightspeedOAuthError as err:
                self.message_user(
                    request,
                    _("%(company)s (%(client)s): not refreshed: %(reason)s")
                    % {"company": company, "client": company.client, "reason": err.message},
                    messages.ERROR,
                )
                continue
            self._report_refresh(request, result)

    def _report_refresh(self, request: HttpRequest, result: tokens.RefreshResult) -> None:
        company = result.company
        values = {
            "company": company,
            "client": company.client,
            "expiry": humanize_expiry(company.expires_at) or "-",
            "reason": company.last_error or _("unknown error"),
        }
        if result.outcome == tokens.REFRESHED:
            self.message_user(
                request,
                _("%(company)s (%(client)s): refreshed; the access token expires %(expiry)s.") % values,
                messages.SUCCESS,
            )
        elif result.outcome == tokens.FRESH:
            self.message_user(
                request,
                _(
                    "%(company)s (%(client)s): refreshed by another process meanwhile; the access token "
                    "expires %(expiry)s."
                )
                % values,
                messages.SUCCESS,
            )
        elif result.outcome == tokens.REAUTHORIZATION_REQUIRED:
            self.message_user(
                request,
                _(
                    "%(company)s (%(client)s): needs re-authorization (%(reason)s). The merchant must "
                    "connect again."
                )
                % values,
                messages.ERROR,
            )
        else:
            values["next"] = humanize_expiry(company.next_attempt_at) or "-"
            self.message_user(
                request,
                _("%(company)s (%(client)s): refresh failed (%(reason)s); it will be retried %(next)s.")
                % values,
                messages.WARNING,
            )

    @admin.action(description=_("Disconnect (erase tokens)"), permissions=["change"])
    def disconnect(self, request: HttpRequest, queryset: QuerySet[ConnectedCompany]) -> HttpResponse | None:
        companies = list(queryset.select_related("client"))
        if request.POST.get("post") != "yes":
            return TemplateResponse(
                request,
                "admin/lightspeed_oauth/connectedcompany/disconnect_confirmation.html",
                {
                    **self.admin_site.each_context(request),
                    "title": _("Disconnect companies?"),
                    "subtitle": None,
                    "opts": self.opts,
                    "companies": companies,
                    "action_checkbox_name": ACTION_CHECKBOX_NAME,
                },
            )
        for company in companies:
            if company.status == Status.DISCONNECTED:
                self.message_user(
                    request, _("%(company)s: was already disconnected.") % {"company": company}, messages.INFO
                )
                continue
            tokens.disconnect(company, user=request.user)
            self.message_user(
                request,
                _(
                    "%(company)s: disconnected; its tokens are erased and "
                    "the merchant must connect again to restore access."
                )
                % {"company": company},
                messages.SUCCESS,
            )
        return None


# Audit trail ------------------------------------------------------------------------------------


class ReadOnlyAdmin(NulFreeChangeListMixin, ReadOnlyMixin, admin.ModelAdmin):
    pass


@admin.register(AuthorizationRequest)
class AuthorizationRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "client",
        "short_state",
        "created_by",
        "via_invitation",
        "reference",
        "outcome",
        "used_at",
        "expires_at",
        "company",
    ]
    list_filter = ["client", "outcome", "via_invitation"]
    search_fields = ["reference", "client__name", "company__name", "company__company_id"]
    date_hierarchy = "created_at"
    list_select_related = ["client", "created_by", "company"]
    # Never state or code_verifier: the state only cut short, the verifier not at all.
    fields = readonly_fields = (
        "client",
        "short_state",
        "created_by",
        "via_invitation",
        "invitation",
        "reference",
        "next_url",
        "created_at",
        "expires_at",
        "used_at",
        "outcome",
        "error",
        "company",
    )

    @admin.display(description=_("state"))
    def short_state(self, obj: AuthorizationRequest) -> str:
        return f"{obj.state[:6]}…" if obj.state else ""


@admin.register(TokenEvent)
class TokenEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "company", "client", "kind", "short_message", "triggered_by"]
    list_filter = ["kind", "company__client"]
    search_fields = ["company__name", "company__company_id", "message"]
    date_hierarchy = "created_at"
    list_select_related = ["company", "company__client", "actor"]
    fields = readonly_fields = ("created_at", "company", "kind", "message", "triggered_by", "details_text")

    @admin.display(description=_("by"), ordering="actor")
    def triggered_by(self, obj: TokenEvent) -> str:
        return _event_actor(obj)

    @admin.display(description=_("details"))
    def details_text(self, obj: TokenEvent) -> str:
        return _event_details(obj)

    @admin.display(description=_("API client"), ordering="company__client__name")
    def client(self, obj: TokenEvent) -> str:
        return str(obj.company.client)

    @admin.display(description=_("message"))
    def short_message(self, obj: TokenEvent) -> str:
        return Truncator(obj.message).chars(100)


# Invitations ------------------------------------------------------------------------------------


class InvitationStatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return list(Invitation.Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        now = timezone.now()
        value = self.value()
        if value == Invitation.Status.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        live = queryset.filter(revoked_at__isnull=True)
        if value == Invitation.Status.EXPIRED:
            return live.filter(expires_at__lte=now)
        if value == Invitation.Status.USED:
            return live.filter(expires_at__gt=now, uses__gte=F("max_uses"))
        if value == Invitation.Status.ACTIVE:
            return live.filter(expires_at__gt=now, uses__lt=F("max_uses"))
        return queryset


@admin.register(Invitation)
class InvitationAdmin(NulFreeChangeListMixin, admin.ModelAdmin):
    """Invitation links: created here (the link is shown once), listed with their uses, revoked.

    The link itself is never stored (only a hash of its token), so it cannot be shown again.
    """

    form = InvitationAdminForm
    list_display = [
        "created_at",
        "client",
        "reference",
        "status_badge",
        "uses_display",
        "expires_at",
        "created_by",
        "email",
    ]
    list_filter = [InvitationStatusFilter, "client"]
    search_fields = ["reference", "email", "client__name", "company__name"]
    date_hierarchy = "created_at"
    list_select_related = ["client", "created_by"]
    raw_id_fields = ["created_by", "company"]
    actions = ["revoke"]
    readonly_fields = [
        "client",
        "reference",
        "company",
        "email",
        "status_badge",
        "uses_display",
        "created_at",
        "created_by",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "revoked_by",
        "flows_link",
    ]

    def get_fields(self, request: HttpRequest, obj: Invitation | None = None) -> list:
        if obj is None:
            return ["client", "reference", "max_uses", "max_age_hours"]
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Invitation | None = None) -> list:
        return self.readonly_fields if obj is not None else []

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and _can_connect(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An invitation's page is read-only; "change" is the right to revoke (the list's action).
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Invitation, form: Any, change: bool) -> None:
        if change:  # pragma: no cover - the page is read-only
            return
        token = obj.set_new_token()
        obj.created_by = request.user  # type: ignore[assignment]  # admin views need a login
        obj.created_at = timezone.now()
        obj.expires_at = obj.created_at + timedelta(seconds=form.max_age)
        obj.save()
        # Shown once by response_add, never stored.
        request._lightspeed_invitation_token = token  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: Invitation, post_url_continue: str | None = None):
        token = getattr(request, "_lightspeed_invitation_token", "")
        context = {
            **self.admin_site.each_context(request),
            "title": _("Invitation link created"),
            "subtitle": None,
            "opts": self.opts,
            "invitation": obj,
            "invitation_url": _absolute_invitation_url(request, token),
            "has_view_permission": self.has_view_permission(request, obj),
        }
        return TemplateResponse(request, "admin/lightspeed_oauth/invitation/created.html", context)

    @admin.display(description=_("status"))
    def status_badge(self, obj: Invitation) -> str:
        return format_html(
            '<span class="ls-invitation ls-invitation-{}">{}</span>', obj.status, obj.get_status_display()
        )

    @admin.display(description=_("uses"), ordering="uses")
    def uses_display(self, obj: Invitation) -> str:
        return f"{obj.uses} / {obj.max_uses}"

    @admin.display(description=_("flows"))
    def flows_link(self, obj: Invitation) -> str:
        url = reverse("admin:lightspeed_oauth_authorizationrequest_changelist")
        return format_html(
            '<a href="{}?{}">{}</a>',
            url,
            urlencode({"invitation__id__exact": obj.pk}),
            _("Authorization requests started from this invitation"),
        )

    @admin.action(description=_("Revoke (the links stop working)"), permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Invitation]) -> None:
        for invitation in queryset.select_related("client"):
            if invitation.revoke(user=request.user):
                self.message_user(
                    request,
                    _("%(invitation)s: revoked; its link no longer starts a connection.")
                    % {"invitation": invitation},
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    _("%(invitation)s: was already revoked.") % {"invitation": invitation},
                    messages.INFO,
                )


# Overview ---------------------------------------------------------------------------------------


@admin.register(Overview)
class OverviewAdmin(admin.ModelAdmin):
    """The overview page, listed on the admin index: health of every connection at a glance."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return (
            request.user.is_active
            and request.user.is_staff
            and request.user.has_perm("lightspeed_oauth.view_connectedcompany")
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("", self.admin_site.admin_view(self.changelist_view), name="{}_{}_changelist".format(*info))
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            **overview_context(),
            "title": _("Lightspeed connections overview"),
            "subtitle": None,
            "opts": self.opts,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/lightspeed_oauth/overview.html", context)
