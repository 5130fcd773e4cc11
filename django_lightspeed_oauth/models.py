"""API clients, connected companies, authorization requests and the token event log."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, models, router, transaction
from django.db.models import F, Q
from django.db.models import signals as model_signals
from django.db.models.functions import Cast, Coalesce, Concat, Now
from django.db.models.sql.subqueries import InsertQuery, UpdateQuery
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .conf import app_settings
from .crypto import EncryptedTextField, Sealed, binding, binding_of, fingerprint, seal
from .exceptions import ConfigurationError, DecryptionError, ProviderError
from .providers import (
    ENVIRONMENTS,
    BusinessLocation,
    Provider,
    check_url_template,
    get_provider,
    provider_classes,
)

if TYPE_CHECKING:
    import requests

__all__ = [
    "ApiClient",
    "AuthorizationRequest",
    "BoundSecretsModel",
    "ConnectedCompany",
    "Invitation",
    "TokenEvent",
]

_URL_TEMPLATE = re.compile(r"^https?://[^\s]+$")


class BoundSecretsModel(models.Model):
    """A model with encrypted fields: a new row is inserted, then its secrets bound to its key.

    Both statements run in one transaction, so a row never exists without its secrets.
    """

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        waiting = [
            field
            for field in self._meta.concrete_fields
            if isinstance(field, EncryptedTextField)
            and isinstance(self.__dict__.get(field.attname), str)
            and self.__dict__.get(field.attname)
        ]
        if self.pk is not None or not waiting:
            super().save(*args, **kwargs)
            return
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            self._secrets_after_insert = True
            try:
                super().save(*args, **kwargs)
            finally:
                del self._secrets_after_insert
            type(self)._base_manager.using(using).filter(pk=self.pk).update(
                **{
                    field.attname: Sealed(seal(self.__dict__[field.attname], binding_of(self, field.name)))
                    for field in waiting
                }
            )

    def secret_context(self, field: str) -> dict[str, Any]:
        """What besides the row and the field a secret is bound to (nothing, by default)."""
        return {}


class ApiClient(BoundSecretsModel):
    """One OAuth client registered with Lightspeed."""

    class Environment(models.TextChoices):
        PRODUCTION = "production", _("Production")
        TRIAL = "trial", _("Trial / demo")
        SANDBOX = "sandbox", _("Local sandbox")

    name = models.CharField(_("name"), max_length=100)
    slug = models.SlugField(
        _("slug"),
        max_length=100,
        unique=True,
        help_text=_("Part of the connect URL, e.g. connect/my-client/."),
    )
    provider = models.CharField(
        _("provider"), max_length=32, help_text=_("The Lightspeed OAuth flavour this client speaks.")
    )
    environment = models.CharField(
        _("environment"), max_length=16, choices=Environment.choices, default=Environment.PRODUCTION
    )
    client_id = models.CharField(_("client id"), max_length=255)
    client_secret = EncryptedTextField(_("client secret"))
    redirect_uri = models.URLField(
        _("redirect URI"),
        max_length=500,
        help_text=_("Exactly as registered with Lightspeed: this site's callback URL."),
    )
    scopes = models.CharField(
        _("scopes"),
        max_length=1000,
        blank=True,
        default="",
        help_text=_("Space-separated, as Lightspeed writes them."),
    )
    authorize_url = models.CharField(
        _("authorize URL"),
        max_length=500,
        blank=True,
        default="",
        help_text=_("Blank: the provider's URL for the environment."),
    )
    token_url = models.CharField(
        _("token URL"),
        max_length=500,
        blank=True,
        default="",
        help_text=_("Blank: the provider's URL. Placeholders such as {domain_prefix} allowed."),
    )
    provider_options = models.JSONField(_("provider options"), default=dict, blank=True)
    is_active = models.BooleanField(_("active"), default=True)
    # Set when a token endpoint refused the client itself (invalid_client / unauthorized_client):
    # refreshes of its companies wait until the client is changed, so one wrong secret does not
    # send every merchant back through the consent page.
    credentials_refused_at = models.DateTimeField(
        _("credentials refused"), null=True, blank=True, editable=False
    )
    credentials_error = models.TextField(_("credentials error"), blank=True, default="", editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    #: Changing any of these may fix refused credentials, so saving a change clears the refusal.
    CREDENTIAL_FIELDS = (
        "provider",
        "environment",
        "client_id",
        "client_secret",
        "redirect_uri",
        "token_url",
        "provider_options",
    )

    #: Where the client secret (and every company's refresh token with it) is sent: the secret is
    #: bound to these, so a change made behind the app's back (SQL) makes it refuse to send it.
    #: The admin asks for the secret again when one changes (ApiClientAdminForm).
    SECRET_DESTINATION_FIELDS = ("provider", "environment", "authorize_url", "token_url", "provider_options")

    class Meta:
        verbose_name = _("API client")
        verbose_name_plural = _("API clients")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<ApiClient {self.slug!r} provider={self.provider!r} env={self.environment!r}>"

    def save(self, *args, **kwargs) -> None:
        """Saving a change to the client's credentials or endpoints clears a credentials refusal."""
        loaded = getattr(self, "_loaded_credentials", None)
        if self.credentials_refused_at and loaded is not None and loaded != self._credentials():
            self.credentials_refused_at = None
            self.credentials_error = ""
            update_fields = kwargs.get("update_fields")
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "credentials_refused_at", "credentials_error"}
        super().save(*args, **kwargs)
        self._loaded_credentials = self._credentials()

    @classmethod
    def from_db(cls, db, field_names, values, **kwargs):
        # **kwargs: Django 6.1 passes fetch_mode (and warns about overrides that refuse it).
        instance = super().from_db(db, field_names, values, **kwargs)
        instance._loaded_credentials = instance._credentials()
        return instance

    def _credentials(self) -> tuple:
        return tuple(repr(self.__dict__.get(name)) for name in self.CREDENTIAL_FIELDS)

    def secret_context(self, field: str) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.SECRET_DESTINATION_FIELDS}

    def clear_credentials_refusal(self) -> None:
        """Let refreshes use this client again (after fixing it at Lightspeed, say)."""
        ApiClient.objects.filter(pk=self.pk).update(credentials_refused_at=None, credentials_error="")
        self.credentials_refused_at = None
        self.credentials_error = ""

    def missing_scopes_message(self) -> str:
        """Why this client's scopes will be refused, or "" (a provider that requires scopes)."""
        provider_class = provider_classes().get(self.provider)
        if provider_class is None or not provider_class.requires_scopes or self.scopes.strip():
            return ""
        return str(
            _("%(provider)s requires scopes: Lightspeed refuses an authorization without them. Add %(hint)s.")
            % {"provider": provider_class.name, "hint": provider_class.scope_hint}
        )

    def scope_warning(self) -> str:
        """Advice about the scopes that does not stop the client from working, or ""."""
        if self.provider == "k-series-v2" and "offline_access" not in self.scopes.split():
            return str(
                _(
                    "K-Series V2 scopes lack offline_access: without it Lightspeed's refresh tokens "
                    "end with the login session, and merchants will have to connect again."
                )
            )
        return ""

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        if self.provider not in provider_classes():
            errors["provider"] = _("Unknown provider %(key)r.") % {"key": self.provider}
        else:
            try:
                provider = self.get_provider()
            except ProviderError as err:
                errors["provider_options"] = err.message
            else:
                if provider.requires_urls:
                    for name in ("authorize_url", "token_url"):
                        if not getattr(self, name):
                            errors[name] = _("The custom provider needs this URL.")
        for name in ("authorize_url", "token_url"):
            value = getattr(self, name)
            if not value:
                continue
            if not _URL_TEMPLATE.match(value):
                errors.setdefault(name, _("Enter an absolute http(s) URL."))
                continue
            try:
                check_url_template(value)
            except ConfigurationError as err:
                errors.setdefault(name, err.message)
        if self.environment not in ENVIRONMENTS:
            errors["environment"] = _("Unknown environment.")
        if "provider" not in errors and self.missing_scopes_message():
            errors["scopes"] = self.missing_scopes_message()
        if errors:
            raise ValidationError(errors)

    def get_provider(self) -> Provider:
        """The provider with this client's options applied (cached per instance)."""
        key = (self.provider, repr(sorted((self.provider_options or {}).items())))
        cached = getattr(self, "_provider_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, get_provider(self.provider, self.provider_options))
            self._provider_cache = cached
        return cached[1]

    def authorize_endpoint(self) -> str:
        return self.get_provider().endpoint("authorize", self.environment, self.authorize_url)

    def token_endpoint(self, context: dict[str, str] | None = None) -> str:
        return self.get_provider().endpoint("token", self.environment, self.token_url, context)

    @property
    def client_secret_fingerprint(self) -> str:
        return fingerprint(self.client_secret)

    def invitation_token(self, *, reference: str = "", max_age: int | None = None, max_uses: int = 1) -> str:
        """Create an :class:`Invitation` for this client and return its token (shown only now)."""
        _invitation, token = Invitation.objects.create_for(
            self, reference=reference, max_age=max_age, max_uses=max_uses
        )
        return token

    def invitation_url(self, *, reference: str = "", max_age: int | None = None, max_uses: int = 1) -> str:
        """Create an :class:`Invitation` and return its link: a merchant opens it, without a site
        login, to connect (``max_uses`` times, until it expires or is revoked).

        Site-relative unless ``LIGHTSPEED_OAUTH["SITE_URL"]`` is set. The link is not stored (only a
        hash of its token is): keep or send it now.
        """
        token = self.invitation_token(reference=reference, max_age=max_age, max_uses=max_uses)
        return Invitation.url_for(token)


def _lock_free() -> Q:
    # A lease nobody holds. A lease that ran out is not free: it is taken over in two steps
    # (mark_expired_lease, then take_over_lease), so that a live refresher that was only held up
    # by the database can store its answer first.
    return Q(refresh_lock_id="") | Q(refresh_lock_until=None)


def _bound(pk: int, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each token encrypted for company ``pk`` (an UPDATE has no instance)."""
    return {
        name: Sealed(seal(value, binding("lightspeed_oauth.connectedcompany", pk, name)))
        if name in ("access_token", "refresh_token") and isinstance(value, str) and value
        else value
        for name, value in values.items()
    }


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=float(value))


#: Characters of a batch lease's lock id before the company's primary key (a BigAutoField key has
#: up to 19 digits and a sign: the two fit refresh_lock_id's 32).
BATCH_LOCK_PREFIX_LENGTH = 12


def batch_lock_id(prefix: str, pk: int) -> str:
    """The lock id :meth:`ConnectedCompanyQuerySet.lease_batch` gives company ``pk``."""
    return f"{prefix}{pk}"


def _leased(lock_id: str | models.Expression, lease: float) -> dict[str, Any]:
    return {
        "refresh_lock_id": lock_id,
        "refresh_lock_until": Now() + _seconds(lease),
        "refresh_lock_started_at": Now(),
    }


class _Update:
    """An UPDATE not run yet: a queryset and the values it sets."""

    def __init__(self, query: models.QuerySet, values: dict[str, Any]) -> None:
        self.query = query
        self.values = values

    def run(self) -> bool:
        return bool(self.query.update(**self.values))

    def compile(self, alias: str) -> tuple[str, list[Any]]:
        update = cast(UpdateQuery, self.query.query.chain(UpdateQuery))
        update.add_update_values(self.values)
        update.annotations = {}
        sql, params = update.get_compiler(alias).as_sql()
        return sql, list(params)


# Values that mark where the real ones go in a compiled statement (within their fields' ranges on
# every database: Django turns a lookup on a value out of range into "no rows" and drops it from
# the SQL).
_MARK_PK = 2**31 - 25
_MARK_VERSION = 2**31 - 19
_MARK_LOCK = "\x1flightspeed-oauth-mark\x1f"
_MARK_TIME = datetime(2999, 12, 31, 23, 59, tzinfo=UTC)


def _mark_for(field: models.Field, number: int) -> Any:
    """A value for ``field`` that nothing else in a statement has (None: no such mark is made)."""
    if isinstance(field, EncryptedTextField):
        return Sealed(f"\x1fmark-{number}\x1f")
    if isinstance(field, models.DateTimeField):
        return _MARK_TIME - timedelta(seconds=number)
    if isinstance(field, (models.CharField, models.TextField)):
        return f"\x1fmark-{number}\x1f"
    return None


class _Slot(NamedTuple):
    """Where one value goes in a compiled statement's parameters, and how it is prepared."""

    position: int
    #: the field whose database preparation a SET value gets (None: a WHERE value, used as it is)
    field: models.Field | None
    #: the type the database backend wrapped the marked value in (psycopg's Int4, say), or None
    wrap: type | None


class _Compiled:
    """A statement's SQL, compiled once, and where in its parameters each value goes."""

    def __init__(self, sql: str | None, params: list[Any], slots: tuple[_Slot, ...]) -> None:
        self.sql = sql
        self.params = params
        self.slots = slots

    @classmethod
    def of(
        cls, statement: _Update, alias: str, marks: tuple[tuple[Any, models.Field | None], ...]
    ) -> _Compiled:
        """Compile ``statement``, made with the values of ``marks`` (each with the field it is set
        on, or None for a condition's value); not compiled (``sql`` None) unless every mark is
        found exactly once."""
        connection = connections[alias]
        sql, params = statement.compile(alias)
        slots = []
        for mark, field in marks:
            try:
                expected = mark if field is None else field.get_db_prep_save(mark, connection=connection)
            except (TypeError, ValueError):  # a mark this database cannot take (USE_TZ off, say)
                return cls(None, [], ())
            found = [
                i for i, value in enumerate(params) if isinstance(value, type(expected)) and value == expected
            ]
            if len(found) != 1:
                return cls(None, [], ())
            wrap = type(params[found[0]])
            slots.append(_Slot(found[0], field, None if wrap is type(expected) else wrap))
        return cls(sql, params, tuple(slots))

    def run(self, alias: str, values: tuple[Any, ...]) -> bool:
        connection = connections[alias]
        params = list(self.params)
        for slot, value in zip(self.slots, values, strict=True):
            if slot.field is not None:
                value = slot.field.get_db_prep_save(value, connection=connection)
            params[slot.position] = value if slot.wrap is None else slot.wrap(value)
        with transaction.mark_for_rollback_on_error(using=alias), connection.cursor() as cursor:
            cursor.execute(cast(str, self.sql), params)
            return bool(cursor.rowcount)


#: Compiled statements, per (statement, database alias, what else decides their SQL).
_compiled_statements: dict[tuple[Any, ...], _Compiled] = {}


def _run_compiled(
    queryset: models.QuerySet,
    key: tuple[Any, ...],
    build: Callable[[], tuple[_Update, tuple[tuple[Any, models.Field | None], ...]] | None],
    values: tuple[Any, ...],
    unmarked: Callable[[], _Update],
) -> bool:
    """Run the statement ``build`` makes with marks, compiled once per ``key`` and database, with
    ``values`` in place of the marks; or ``unmarked()`` through the ORM when it cannot be
    compiled (``build`` gives None, or a mark is not found), or when ``queryset`` has conditions
    of its own.

    Building an UPDATE with the ORM costs more CPU than running it; these statements are the same
    for every refresh but for a few values.
    """
    state = cast(Any, queryset)  # a queryset's own alias and routing hints, as update() uses them
    alias = state._db or router.db_for_write(queryset.model, **state._hints)
    if queryset.query.has_filters():
        return unmarked().run()
    full_key = (*key, alias)
    compiled = _compiled_statements.get(full_key)
    if compiled is None:
        built = build()
        compiled = _Compiled(None, [], ()) if built is None else _Compiled.of(built[0], alias, built[1])
        _compiled_statements[full_key] = compiled
    if compiled.sql is None:
        return unmarked().run()
    return compiled.run(alias, values)


class ConnectedCompanyQuerySet(models.QuerySet):
    """Every change of a company's token state, one conditional UPDATE each.

    Each method runs one statement that says *when* it may apply (the holder of the lease, the
    token version read, a lease that is over...) and returns whether it did. Times are the
    database's (``Now()``), so the clocks of the app servers never decide a lease or a back-off.
    """

    def take_lease(self, pk: int, *, version: int, lock_id: str, lease: float, force: bool) -> bool:
        """Become the company's only refresher, if nobody holds a live lease and nothing changed.

        The statement is the same for every refresh but for the company, its token version and
        the lock id: it is compiled once per database and kept, and runs with them swapped in.
        """
        return _run_compiled(
            self,
            ("take_lease", float(lease), force),
            lambda: (
                self._lease_statement(_MARK_PK, _MARK_VERSION, _MARK_LOCK, lease, force),
                ((_MARK_PK, None), (_MARK_VERSION, None), (_MARK_LOCK, None)),
            ),
            (pk, version, lock_id),
            lambda: self._lease_statement(pk, version, lock_id, lease, force),
        )

    def _lease_statement(self, pk: int, version: int, lock_id: str, lease: float, force: bool) -> _Update:
        return _Update(self.filter(pk=pk, token_version=version)._leasable(force), _leased(lock_id, lease))

    def _leasable(self, force: bool) -> ConnectedCompanyQuerySet:
        """The companies whose lease may be taken now: refreshable, nobody holding a lease, and
        (unless ``force``) not backing off."""
        statuses = [ConnectedCompany.Status.ACTIVE, ConnectedCompany.Status.FAILING]
        if force:
            statuses.append(ConnectedCompany.Status.UNCERTAIN)
        query = self.filter(status__in=statuses).filter(_lock_free())
        if not force:
            # The back-off is part of the condition: a failure recorded since we read the row
            # stops us too.
            query = query.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now()))
        return query

    def lease_batch(self, claim_id: str, *, prefix: str, lease: float, force: bool) -> int:
        """Take, in one statement, the free lease of each company of the sweep batch ``claim_id``
        that :meth:`take_lease` would lease now; each under its own lock id, ``prefix`` followed by
        its primary key (:func:`batch_lock_id`). Returns how many were leased; read the rows back
        to see which (the others are held elsewhere, or changed since the batch was claimed)."""
        if len(prefix) != BATCH_LOCK_PREFIX_LENGTH:
            # A fixed length: a prefix and a key joined without a separator read only one way.
            raise ValueError(f"prefix must have {BATCH_LOCK_PREFIX_LENGTH} characters")
        query = self.filter(sweep_claim_id=claim_id)._leasable(force)
        lock_ids = Concat(models.Value(prefix), Cast("pk", output_field=models.CharField()))
        return query.update(**_leased(lock_ids, lease))

    def extend_live_leases(self, lock_ids: list[str], *, lease: float) -> int:
        """Extend those of the leases ``lock_ids`` that are still held and live (database clock);
        unlike :meth:`renew_leases`, never one that ran out. Returns how many."""
        return self.filter(refresh_lock_id__in=lock_ids, refresh_lock_until__gt=Now()).update(
            refresh_lock_until=Now() + _seconds(lease)
        )

    def release_leases(self, lock_ids: list[str]) -> int:
        """Let go of the leases ``lock_ids`` (those still held by them)."""
        return self.filter(refresh_lock_id__in=lock_ids).update(**_RELEASED)

    def release_batch_leases(self, claim_id: str, *, prefix: str) -> int:
        """Let go of the leases :meth:`lease_batch` took for ``claim_id`` with ``prefix`` that are
        still held (an attempt to claim and lease a batch that failed half way)."""
        if not prefix:
            raise ValueError("prefix must not be empty")
        return self.filter(sweep_claim_id=claim_id, refresh_lock_id__startswith=prefix).update(**_RELEASED)

    def mark_expired_lease(self, pk: int, *, version: int, holder: str) -> bool:
        """Note that ``holder``'s lease ran out (database clock): its renewals stop counting, and
        after a grace period another refresher may take over (:meth:`take_over_lease`)."""
        return bool(
            self.filter(
                pk=pk,
                token_version=version,
                refresh_lock_id=holder,
                refresh_lock_until__lt=Now(),
                refresh_lock_started_at__isnull=False,
            ).update(refresh_lock_until=Now(), refresh_lock_started_at=None)
        )

    def take_over_lease(
        self, pk: int, *, version: int, holder: str, lock_id: str, lease: float, grace: float
    ) -> bool:
        """Take a lease marked as run out at least ``grace`` seconds ago, if nothing changed since.

        The grace lets a refresher that is alive but was held up by the database (a restart, a
        locked file) store its answer before anyone spends the old refresh token again.
        """
        return bool(
            self.filter(
                pk=pk,
                token_version=version,
                refresh_lock_id=holder,
                refresh_lock_started_at__isnull=True,
                refresh_lock_until__lt=Now() - _seconds(grace),
            ).update(**_leased(lock_id, lease))
        )

    def renew_leases(self, lock_ids: list[str], *, lease: float) -> int:
        """Extend the leases of live refreshers (the caller decides for how long it keeps each).

        A lease marked as run out but not taken over yet is taken back: its holder is alive after
        all (held up by the database, say), and no other refresher has spent the token.
        """
        return self.filter(refresh_lock_id__in=lock_ids).update(
            refresh_lock_until=Now() + _seconds(lease),
            refresh_lock_started_at=Coalesce(F("refresh_lock_started_at"), Now()),
        )

    def renew_claims(self, claim_ids: list[str], *, lifetime: float) -> int:
        """Extend the batch claims of a live sweep (a claim another sweep took over is left alone)."""
        return self.filter(sweep_claim_id__in=claim_ids).update(sweep_claim_until=Now() + _seconds(lifetime))

    def release_claim(self, claim_id: str) -> int:
        """Let go of a sweep's batch: its companies may be claimed again at once."""
        return self.filter(sweep_claim_id=claim_id).update(sweep_claim_id="", sweep_claim_until=None)

    def store_refreshed(self, pk: int, *, lock_id: str, values: dict[str, Any]) -> bool:
        """The lease holder stores new tokens and lets go of the lease.

        Compiled once per database and per set of ``values`` names (and which of them are None,
        which the SQL spells out), as :meth:`take_lease` is.
        """
        values = _bound(pk, values)
        names = tuple(sorted(values))
        given = tuple(name for name in names if values[name] is not None)

        def marked() -> tuple[_Update, tuple[tuple[Any, models.Field | None], ...]] | None:
            fields = [cast(models.Field, self.model._meta.get_field(name)) for name in given]
            marks = {
                name: _mark_for(field, n) for n, (name, field) in enumerate(zip(given, fields, strict=True))
            }
            if any(mark is None for mark in marks.values()):
                return None  # a value no mark stands for (JSON): the ORM builds it each time
            statement = self._stored(_MARK_PK, _MARK_LOCK, {name: marks.get(name) for name in names})
            set_values = tuple((marks[name], field) for name, field in zip(given, fields, strict=True))
            return statement, ((_MARK_PK, None), (_MARK_LOCK, None), *set_values)

        return _run_compiled(
            self,
            ("store_refreshed", names, given),
            marked,
            (pk, lock_id, *(values[name] for name in given)),
            lambda: self._stored(pk, lock_id, values),
        )

    def _stored(self, pk: int, lock_id: str, values: dict[str, Any]) -> _Update:
        return _Update(self.filter(pk=pk, refresh_lock_id=lock_id), {**_STORED, **values})

    def store_refreshed_late(self, pk: int, *, version: int, values: dict[str, Any]) -> bool:
        """A refresher whose lease ran out stores its tokens, only if nothing happened meanwhile:
        same tokens, still refreshable (not disconnected, not waiting for the merchant), and nobody
        holding a live lease. A newer outcome always wins."""
        nobody_else = _lock_free() | Q(refresh_lock_until__lt=Now())
        refreshable = [
            ConnectedCompany.Status.ACTIVE,
            ConnectedCompany.Status.FAILING,
            ConnectedCompany.Status.UNCERTAIN,
        ]
        return bool(
            self.filter(pk=pk, token_version=version, status__in=refreshable)
            .filter(nobody_else)
            .update(**_bound(pk, values), **_STORED)
        )

    def record_transient_failure(self, pk: int, *, lock_id: str, message: str, retry_in: float) -> bool:
        return bool(
            self.filter(pk=pk, refresh_lock_id=lock_id).update(
                status=ConnectedCompany.Status.FAILING,
                failure_count=F("failure_count") + 1,
                last_error=message,
                next_attempt_at=Now() + _seconds(retry_in),
                **_RELEASED,
            )
        )

    def record_uncertain(self, pk: int, *, lock_id: str, message: str) -> bool:
        """The token request went out and its answer was lost: it may have rotated the token."""
        return bool(
            self.filter(pk=pk, refresh_lock_id=lock_id).update(
                status=ConnectedCompany.Status.UNCERTAIN,
                failure_count=F("failure_count") + 1,
                last_error=message,
                next_attempt_at=None,
                **_RELEASED,
            )
        )

    def record_reauthorization(self, pk: int, *, version: int, lock_id: str | None, message: str) -> bool:
        query = self.filter(pk=pk, token_version=version)
        if lock_id:
            query = query.filter(refresh_lock_id=lock_id)
        return bool(
            query.update(
                status=ConnectedCompany.Status.REAUTHORIZATION_REQUIRED,
                last_error=message,
                failure_count=F("failure_count") + 1,
                next_attempt_at=None,
                **_RELEASED,
            )
        )

    def write_tokens(self, pk: int, **tokens: str) -> bool:
        """Write ``access_token`` / ``refresh_token`` of company ``pk`` as they are, bound to it
        (for loading rows made with ``bulk_create``, which cannot bind them: no key yet)."""
        return bool(self.filter(pk=pk).update(**_bound(pk, tokens)))

    def release_lease(self, pk: int, *, lock_id: str, **values: Any) -> bool:
        return bool(self.filter(pk=pk, refresh_lock_id=lock_id).update(**values, **_RELEASED))

    def store_grant(
        self,
        client: ApiClient,
        company_id: str,
        *,
        previous_ids: tuple[str, ...],
        values: dict[str, Any],
        details: dict[str, Any],
    ) -> tuple[ConnectedCompany, bool]:
        """A new grant from the authorization flow: create the company, or give the existing row
        (one per client and company id; or one stored under a ``previous_ids`` id, adopted) the new
        tokens, whatever its state. Runs inside the caller's transaction, with the row locked."""
        locked = self.select_for_update()
        company = cast("ConnectedCompany | None", locked.filter(client=client, company_id=company_id).first())
        if company is None and previous_ids:
            company = cast(
                "ConnectedCompany | None", locked.filter(client=client, company_id__in=previous_ids).first()
            )
        created = company is None
        if company is None:
            company = ConnectedCompany(client=client)
        company.company_id = company_id
        for name, value in {**values, **_NEW_GRANT}.items():
            setattr(company, name, value)
        company.connected_at = timezone.now()
        kept = {k: v for k, v in (company.details or {}).items() if k != "identity_warning"}
        company.details = {**kept, **details}
        if created:
            company.save()
        else:
            company.token_version += 1
            company.save(update_fields=[f.name for f in company._meta.concrete_fields if not f.primary_key])
        return company, created

    def disconnect(self, pk: int) -> bool:
        return bool(
            self.filter(pk=pk).update(
                status=ConnectedCompany.Status.DISCONNECTED,
                access_token="",
                refresh_token="",
                expires_at=None,
                refresh_expires_at=None,
                token_version=F("token_version") + 1,
                next_attempt_at=None,
                **_RELEASED,
            )
        )


class ConnectedCompany(BoundSecretsModel):
    """One merchant account that authorized an API client, with its (encrypted) tokens."""

    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        FAILING = "failing", _("Failing")
        REAUTHORIZATION_REQUIRED = "reauthorization_required", _("Re-authorization required")
        DISCONNECTED = "disconnected", _("Disconnected")
        #: A refresh request went out and its answer was lost (read timeout, dropped connection):
        #: Lightspeed may have rotated the refresh token. Not retried on a timer; see README.
        UNCERTAIN = "uncertain", _("Refresh outcome uncertain")

    client = models.ForeignKey(
        ApiClient, on_delete=models.PROTECT, related_name="companies", verbose_name=_("API client")
    )
    company_id = models.CharField(
        _("company id"), max_length=255, help_text=_("The company's id at Lightspeed.")
    )
    name = models.CharField(_("name"), max_length=255, blank=True, default="")
    reference = models.CharField(
        _("reference"),
        max_length=255,
        blank=True,
        default="",
        db_index=True,
        help_text=_("Your own label, from the connect or invitation link."),
    )
    status = models.CharField(_("status"), max_length=32, choices=Status.choices, default=Status.ACTIVE)
    access_token = EncryptedTextField(_("access token"))
    refresh_token = EncryptedTextField(_("refresh token"))
    token_type = models.CharField(max_length=32, blank=True, default="bearer")
    granted_scopes = models.CharField(_("granted scopes"), max_length=1000, blank=True, default="")
    expires_at = models.DateTimeField(_("access token expires"), null=True, blank=True)
    refresh_expires_at = models.DateTimeField(_("refresh token expires"), null=True, blank=True)
    connected_at = models.DateTimeField(_("connected"), default=timezone.now)
    connected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("connected by"),
    )
    last_refreshed_at = models.DateTimeField(_("last refreshed"), null=True, blank=True)
    failure_count = models.PositiveIntegerField(_("failures"), default=0)
    last_error = models.TextField(_("last error"), blank=True, default="")
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True)
    # Details worth keeping from the connection (domain_prefix...); never a secret.
    details = models.JSONField(_("details"), default=dict, blank=True)
    # Concurrency: every write of tokens bumps token_version; a refresher takes the lease lock with
    # one conditional UPDATE on (token_version, lock free or lease over). See tokens.py.
    token_version = models.PositiveIntegerField(default=0, editable=False)
    refresh_lock_id = models.CharField(max_length=32, blank=True, default="", editable=False)
    refresh_lock_until = models.DateTimeField(null=True, blank=True, editable=False)
    # When the current lease was taken (database clock): renewals stop REFRESH_MAX_DURATION later.
    refresh_lock_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Which sweep has this company in the batch it works on, until when (database clock; renewed
    # while the sweep lives). Only spares other sweeps the walk: the lease above is the guarantee.
    sweep_claim_id = models.CharField(max_length=32, blank=True, default="", db_index=True, editable=False)
    sweep_claim_until = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    objects = ConnectedCompanyQuerySet.as_manager()

    class Meta:
        verbose_name = _("connected company")
        verbose_name_plural = _("connected companies")
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["client", "company_id"], name="lightspeed_oauth_unique_company_per_client"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="lightspeed_status_expiry"),
        ]

    #: Written only by the flow, refresh and disconnect, each with a conditional UPDATE. A plain
    #: ``save()`` of an instance loaded earlier must not write them back: that would restore a
    #: spent refresh token (and an old token_version) after a refresh in another process.
    TOKEN_STATE_FIELDS = frozenset(
        {
            "status",
            "access_token",
            "refresh_token",
            "token_type",
            "granted_scopes",
            "expires_at",
            "refresh_expires_at",
            "last_refreshed_at",
            "failure_count",
            "last_error",
            "next_attempt_at",
            "token_version",
            "refresh_lock_id",
            "refresh_lock_until",
            "refresh_lock_started_at",
            "sweep_claim_id",
            "sweep_claim_until",
        }
    )

    def __str__(self) -> str:
        return self.name or self.company_id

    def __repr__(self) -> str:
        return f"<ConnectedCompany {self.company_id!r} client={self.client_id} status={self.status!r}>"

    def save(self, *args, **kwargs) -> None:
        """Saving an existing company leaves its token state alone unless ``update_fields``
        names those fields explicitly."""
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in self.TOKEN_STATE_FIELDS
            ]
        super().save(*args, **kwargs)

    # State ------------------------------------------------------------------------------------

    @property
    def access_token_fingerprint(self) -> str:
        return fingerprint(self.access_token)

    @property
    def refresh_token_fingerprint(self) -> str:
        return fingerprint(self.refresh_token)

    def undecryptable_reason(self) -> str:
        """Why this process cannot decrypt the company's tokens, or "" when it can (never a secret)."""
        try:
            self.access_token  # noqa: B018
            self.refresh_token  # noqa: B018
        except DecryptionError as err:
            return err.message
        return ""

    @property
    def business_locations(self) -> list[BusinessLocation]:
        """The K-Series business's locations, as stored when it connected (most API calls need one)."""
        locations = (self.details or {}).get("business_locations") or []
        return [BusinessLocation.from_lightspeed(item) for item in locations if isinstance(item, dict)]

    def url_context(self) -> dict[str, str]:
        """Values for URL placeholders such as {domain_prefix}."""
        return {k: str(v) for k, v in (self.details or {}).items() if isinstance(v, (str, int))}

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def needs_refresh(self, within: float | None = None, now: datetime | None = None) -> bool:
        """Whether the access token expires within ``within`` seconds (default REFRESH_MARGIN)."""
        if self.expires_at is None:
            return False
        margin = app_settings.REFRESH_MARGIN if within is None else within
        return self.expires_at <= (now or timezone.now()) + timedelta(seconds=margin)

    # Tokens -----------------------------------------------------------------------------------

    def get_access_token(self) -> str:
        """A valid access token, refreshed first when it expires within REFRESH_MARGIN.

        Raises :class:`~.exceptions.ReauthorizationRequired` when the merchant must connect
        again and :class:`~.exceptions.RefreshFailed` when a refresh failed and the current token
        has expired.
        """
        from .tokens import get_access_token

        return get_access_token(self)

    def refresh(self, force: bool = False) -> str:
        """Refresh now if needed (or always with ``force``); updates this instance in place.

        Returns the outcome: ``"refreshed"``, ``"fresh"`` (not needed, or done by another
        process meanwhile), ``"failed"`` or ``"reauthorization_required"``.
        """
        from .tokens import refresh

        return refresh(self, force=force).outcome

    def api_session(self) -> requests.Session:
        """A requests session for the company's API: bearer token, one refresh-and-retry on 401."""
        from .tokens import CompanySession

        return CompanySession(self)

    def disconnect(self, *, user=None, message: str = "") -> None:
        """Erase the tokens and mark the company disconnected; the history stays."""
        from .tokens import disconnect

        disconnect(self, user=user, message=message)


def hash_invitation_token(token: str) -> str:
    """What the database keeps of an invitation's token: its SHA-256 (the token is 256 random bits)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class InvitationQuerySet(models.QuerySet["Invitation"]):
    def usable(self) -> InvitationQuerySet:
        """Neither revoked, expired nor used up (database clock)."""
        return self.filter(revoked_at__isnull=True, expires_at__gt=Now(), uses__lt=F("max_uses"))

    def create_for(
        self,
        client: ApiClient,
        *,
        reference: str = "",
        max_age: int | None = None,
        max_uses: int = 1,
        created_by: Any = None,
        company: ConnectedCompany | None = None,
        email: str = "",
    ) -> tuple[Invitation, str]:
        """A new invitation and its token: the only time the token exists outside the link."""
        max_age = int(max_age if max_age is not None else app_settings.INVITATION_MAX_AGE)
        if max_age <= 0:
            raise ValueError("max_age must be a positive number of seconds")
        if int(max_uses) < 1:
            raise ValueError("max_uses must be at least 1")
        reference = reference.strip()
        if len(reference) > 255 or any(ord(c) < 32 or c == "\x7f" for c in reference):
            raise ValueError("reference must be at most 255 printable characters")
        now = timezone.now()
        invitation = self.model(
            client=client,
            reference=reference,
            max_uses=int(max_uses),
            created_at=now,
            expires_at=now + timedelta(seconds=max_age),
            created_by=created_by,
            company=company,
            email=email,
        )
        token = invitation.set_new_token()
        invitation.save(force_insert=True)
        return invitation, token

    def claim_use(self, pk: int) -> bool:
        """Take one use of the invitation, if it is still usable: one conditional UPDATE."""
        return bool(self.filter(pk=pk).usable().update(uses=F("uses") + 1, last_used_at=Now()))

    def release_use(self, request_pk: int) -> bool:
        """Give back the use a flow took, once, when it ended without connecting (declined,
        failed, abandoned), so that the merchant can try again with the same link."""
        with transaction.atomic():
            released = (
                AuthorizationRequest.objects.filter(pk=request_pk, holds_invitation_use=True)
                .exclude(outcome=AuthorizationRequest.Outcome.CONNECTED)
                .update(holds_invitation_use=False)
            )
            if not released:
                return False
            invitation_id = (
                AuthorizationRequest.objects.filter(pk=request_pk)
                .values_list("invitation", flat=True)
                .first()
            )
            if invitation_id is not None:
                self.filter(pk=invitation_id, uses__gt=0).update(uses=F("uses") - 1)
        return True

    def release_abandoned(self, invitation: Invitation) -> int:
        """Give back the uses of this invitation's flows whose state expired unused."""
        stale = AuthorizationRequest.objects.filter(
            invitation=invitation, holds_invitation_use=True, used_at__isnull=True, expires_at__lte=Now()
        ).values_list("pk", flat=True)
        return sum(self.release_use(pk) for pk in list(stale))


class Invitation(models.Model):
    """A link that lets a merchant without a site login connect to one API client.

    Only a hash of its random token is stored. Single use unless staff allow more, expiring,
    revocable. A use is taken when a flow starts and given back when that flow ends without
    connecting.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        USED = "used", _("Used")
        EXPIRED = "expired", _("Expired")
        REVOKED = "revoked", _("Revoked")

    client = models.ForeignKey(
        ApiClient, on_delete=models.CASCADE, related_name="invitations", verbose_name=_("API client")
    )
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    reference = models.CharField(
        _("reference"),
        max_length=255,
        blank=True,
        default="",
        help_text=_("Your own label for the company that will connect (kept on the company)."),
    )
    company = models.ForeignKey(
        ConnectedCompany,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("for company"),
        help_text=_("The company that must connect again, for an invitation sent for one."),
    )
    email = models.EmailField(_("e-mailed to"), blank=True, default="")
    max_uses = models.PositiveIntegerField(_("maximum uses"), default=1)
    uses = models.PositiveIntegerField(_("uses"), default=0, editable=False)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("created by"),
    )
    expires_at = models.DateTimeField(_("expires"))
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("revoked by"),
        editable=False,
    )

    objects = InvitationQuerySet.as_manager()

    class Meta:
        verbose_name = _("invitation")
        verbose_name_plural = _("invitations")
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["expires_at"], name="lightspeed_invitation_expiry")]

    def __str__(self) -> str:
        label = self.reference or (str(self.company) if self.company_id else "")
        when = timezone.localtime(self.created_at) if timezone.is_aware(self.created_at) else self.created_at
        return f"{self.client} {when:%Y-%m-%d %H:%M}" + (f" ({label})" if label else "")

    def __repr__(self) -> str:
        return f"<Invitation {self.pk} client={self.client_id} uses={self.uses}/{self.max_uses}>"

    def set_new_token(self) -> str:
        """Give the invitation a new random token; return it (only its hash is kept)."""
        token = secrets.token_urlsafe(32)
        self.token_hash = hash_invitation_token(token)
        return token

    @staticmethod
    def url_for(token: str) -> str:
        """The link of the invitation whose token is ``token``; absolute when ``SITE_URL`` is set."""
        path = reverse("lightspeed_oauth:invite", kwargs={"token": token})
        site = app_settings.SITE_URL
        return f"{site.rstrip('/')}{path}" if site else path

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        if self.uses >= self.max_uses:
            return self.Status.USED
        return self.Status.ACTIVE

    def get_status_display(self) -> str:
        return str(self.Status(self.status).label)

    def revoke(self, user: Any = None) -> bool:
        """Stop the link from starting any new flow; False when it was already revoked."""
        now = timezone.now()
        done = Invitation.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
            revoked_at=now, revoked_by=user
        )
        if done:
            self.revoked_at = now
            self.revoked_by = user
        return bool(done)


class AuthorizationRequest(BoundSecretsModel):
    """One started authorization flow, kept server-side and consumed exactly once."""

    class Outcome(models.TextChoices):
        PENDING = "pending", _("Pending")
        CHOOSING = "choosing", _("Choosing a business")
        CONNECTED = "connected", _("Connected")
        DENIED = "denied", _("Denied by the merchant")
        FAILED = "failed", _("Failed")

    client = models.ForeignKey(
        ApiClient,
        on_delete=models.CASCADE,
        related_name="authorization_requests",
        verbose_name=_("API client"),
    )
    state = models.CharField(_("state"), max_length=128, unique=True)
    code_verifier = EncryptedTextField(_("PKCE verifier"))
    # sha256 of a nonce kept in the starting browser's session: the callback must come back to it.
    browser_binding = models.CharField(max_length=64, blank=True, default="", editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("started by"),
    )
    via_invitation = models.BooleanField(_("via invitation"), default=False)
    invitation = models.ForeignKey(
        "Invitation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="authorization_requests",
        verbose_name=_("invitation"),
    )
    # True while this flow holds one use of its invitation that may still be given back.
    holds_invitation_use = models.BooleanField(default=False, editable=False)
    next_url = models.CharField(_("next URL"), max_length=2000, blank=True, default="")
    reference = models.CharField(_("reference"), max_length=255, blank=True, default="")
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"))
    used_at = models.DateTimeField(_("used"), null=True, blank=True)
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices, default=Outcome.PENDING)
    error = models.TextField(_("error"), blank=True, default="")
    # A K-Series user who sees several businesses chooses one after the callback: until then the
    # new tokens wait here, encrypted (never in the browser), with the businesses to choose from.
    pending_tokens = EncryptedTextField(_("tokens awaiting a choice"))
    pending_companies = models.JSONField(
        _("companies to choose from"), default=list, blank=True, editable=False
    )
    choice_expires_at = models.DateTimeField(_("choice expires"), null=True, blank=True, editable=False)
    company = models.ForeignKey(
        ConnectedCompany,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("company"),
    )

    class Meta:
        verbose_name = _("authorization request")
        verbose_name_plural = _("authorization requests")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.client} {self.created_at:%Y-%m-%d %H:%M} ({self.outcome})"

    def __repr__(self) -> str:
        return f"<AuthorizationRequest {self.pk} client={self.client_id} outcome={self.outcome!r}>"


#: A token event's INSERT per database alias ("": Django's save() must build it each time).
_compiled_event_inserts: dict[str, str] = {}


class TokenEventQuerySet(models.QuerySet["TokenEvent"]):
    def record(
        self, *, company_id: int, kind: str, message: str, details: dict[str, Any], actor: Any = None
    ) -> None:
        """Append an event to a company's history.

        One INSERT, compiled once per database (building it with the ORM for every refresh cost
        more CPU than running it). Where ``pre_save`` or ``post_save`` receivers listen for token
        events, the event is saved the usual way, so that they hear of it.
        """
        model = self.model
        event = model(company_id=company_id, kind=kind, message=message, details=details, actor=actor)
        state = cast(Any, self)  # a queryset's own alias and routing hints, as create() uses them
        alias = state._db or router.db_for_write(model, **state._hints)
        if model_signals.pre_save.has_listeners(model) or model_signals.post_save.has_listeners(model):
            event.save(force_insert=True, using=alias)
            return
        fields = [field for field in model._meta.local_concrete_fields if field is not model._meta.auto_field]
        sql = _compiled_event_inserts.get(alias)
        if sql is None:
            sql = _compiled_event_inserts[alias] = _insert_sql(event, fields, alias)
        if not sql:
            event.save(force_insert=True, using=alias)
            return
        connection = connections[alias]
        params = [
            field.get_db_prep_save(field.pre_save(event, True), connection=connection) for field in fields
        ]
        with transaction.mark_for_rollback_on_error(using=alias), connection.cursor() as cursor:
            cursor.execute(sql, params)


def _insert_sql(instance: models.Model, fields: list[models.Field], alias: str) -> str:
    """The INSERT of ``instance``'s ``fields``, when each of them is one plain parameter (else "")."""
    # A field that makes its own placeholder (get_placeholder, Django 6.1's get_placeholder_sql)
    # may make it from the value: such a statement is not the same for every event.
    if any(hasattr(field, "get_placeholder") or hasattr(field, "get_placeholder_sql") for field in fields):
        return ""
    query = InsertQuery(type(instance))
    query.insert_values(fields, [instance])
    statements = query.get_compiler(using=alias).as_sql()
    if len(statements) != 1 or len(statements[0][1]) != len(fields):
        return ""
    return statements[0][0]


class TokenEvent(models.Model):
    """An append-only line of a company's token history."""

    class Kind(models.TextChoices):
        CONNECTED = "connected", _("Connected")
        REFRESHED = "refreshed", _("Refreshed")
        REFRESH_FAILED = "refresh_failed", _("Refresh failed")
        REFRESH_UNCERTAIN = "refresh_uncertain", _("Refresh outcome uncertain")
        REAUTHORIZATION_REQUIRED = "reauthorization_required", _("Re-authorization required")
        DISCONNECTED = "disconnected", _("Disconnected")

    company = models.ForeignKey(
        ConnectedCompany, on_delete=models.CASCADE, related_name="events", verbose_name=_("company")
    )
    kind = models.CharField(_("kind"), max_length=32, choices=Kind.choices)
    message = models.TextField(_("message"), blank=True, default="")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("by"),
    )
    # Fingerprints and expiry times only; never a token.
    details = models.JSONField(_("details"), default=dict, blank=True)
    created_at = models.DateTimeField(_("at"), default=timezone.now, db_index=True)

    objects = TokenEventQuerySet.as_manager()

    class Meta:
        verbose_name = _("token event")
        verbose_name_plural = _("token events")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.created_at:%Y-%m-%d %H:%M:%S}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None and not self._state.adding:
            raise ValueError("Token events are append-only: they cannot be changed.")
        super().save(*args, **kwargs)


class Overview(ApiClient):
    """No data of its own: the admin's overview page of every connection, listed on the admin index."""

    class Meta:
        proxy = True
        verbose_name = _("overview")
        verbose_name_plural = _("overview")
        default_permissions = ()


#: What every transition that ends a refresher's work writes: the lease is let go.
_RELEASED: dict[str, Any] = {
    "refresh_lock_id": "",
    "refresh_lock_until": None,
    "refresh_lock_started_at": None,
    "updated_at": Now(),
}
#: What storing new tokens writes besides them.
_STORED: dict[str, Any] = {
    **_RELEASED,
    "status": ConnectedCompany.Status.ACTIVE,
    "failure_count": 0,
    "last_error": "",
    "next_attempt_at": None,
    "token_version": F("token_version") + 1,
    "last_refreshed_at": Now(),
}
#: What a new grant resets: whatever the company's state was, it starts again.
_NEW_GRANT: dict[str, Any] = {
    "status": ConnectedCompany.Status.ACTIVE,
    "last_refreshed_at": None,
    "failure_count": 0,
    "last_error": "",
    "next_attempt_at": None,
    "refresh_lock_id": "",
    "refresh_lock_until": None,
    "refresh_lock_started_at": None,
}
