"""Admin forms: API clients with a write-only secret, and invitation links."""

from __future__ import annotations

from typing import Any, cast

import django
from django import forms
from django.apps import apps
from django.db import models
from django.forms.fields import InvalidJSONInput
from django.utils.translation import gettext_lazy as _

from .conf import app_settings
from .exceptions import ProviderError
from .models import ApiClient, Invitation
from .providers import Provider, provider_choices, provider_classes

__all__ = ["ApiClientAdminForm", "CompanyInvitationForm", "InvitationAdminForm", "InvitationForm"]

PROVIDER_OPTIONS_PREFIX = "Invalid provider options: "


def _formfield(db_field: models.Field, **kwargs: Any) -> forms.Field | None:
    if isinstance(db_field, models.URLField) and django.VERSION >= (5, 0):
        # Redirect URIs are https; say so before Django 6 makes it the default.
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


#: Provider options are a flat object; nothing legitimate comes near this depth.
PROVIDER_OPTIONS_MAX_DEPTH = 32


def _unstorable_json(value: Any) -> str:
    """Why ``value`` (parsed JSON) cannot be stored on every database, or ``""``.

    Walks without recursion, so that no nesting can exhaust the stack: PostgreSQL's jsonb refuses a
    NUL character in a string, no database can encode a lone surrogate, and deep nesting would
    overflow the JSON encoder.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > PROVIDER_OPTIONS_MAX_DEPTH:
            return str(_("Provider options are nested too deeply."))
        if isinstance(item, dict):
            pending.extend((key, depth) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in item):
            return str(_("Provider options cannot contain a NUL character or an unpaired surrogate."))
    return ""


class ProviderOptionsField(forms.JSONField):
    """A JSON field whose bad input is a form error: too deep, NUL characters, lone surrogates."""

    def to_python(self, value: Any) -> Any:
        try:
            converted = super().to_python(value)
        except RecursionError:
            message = _("Provider options are nested too deeply.")
            raise forms.ValidationError(message, code="invalid") from None
        problem = _unstorable_json(converted)
        if problem:
            raise forms.ValidationError(problem, code="invalid")
        return converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        # What the page shows again: the text as typed when it cannot be parsed, or when the parsed
        # value could not be rendered (a lone surrogate cannot be encoded into the page).
        try:
            bound = super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)
        if not isinstance(bound, InvalidJSONInput) and _unstorable_json(bound):
            return InvalidJSONInput(data)
        return bound

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return super().has_changed(initial, data)
        except RecursionError:
            return True


class ApiClientAdminForm(forms.ModelForm):
    """An API client whose secret can be replaced but never read back."""

    provider = forms.ChoiceField(
        label=_("Provider"),
        choices=provider_choices,
        help_text=_("The Lightspeed OAuth flavour this client speaks."),
    )
    # Write-only: the stored secret is never put in the page, not even as a form value.
    client_secret = forms.CharField(
        label=_("Client secret"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Write-only. Leave blank to keep the stored secret."),
    )

    class Meta:
        model = ApiClient
        formfield_callback = _formfield
        field_classes = {"provider_options": ProviderOptionsField}
        # client_secret is a declared field: the model field is not editable, on purpose.
        fields = [
            "name",
            "slug",
            "provider",
            "environment",
            "client_id",
            "redirect_uri",
            "scopes",
            "authorize_url",
            "token_url",
            "provider_options",
            "is_active",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        environment = self.fields.get("environment")
        sandbox = ApiClient.Environment.SANDBOX
        if (
            isinstance(environment, forms.ChoiceField)
            and not apps.is_installed("django_lightspeed_oauth.sandbox")
            and self.instance.environment != sandbox
        ):
            # "Local sandbox" needs the sandbox app; a client already set to it keeps the choice.
            choices = cast("list[tuple[str, str]]", environment.choices)  # a model field's: a list
            environment.choices = [c for c in choices if c[0] != sandbox]
        if "client_secret" in self.fields:
            adding = self.instance._state.adding
            self.fields["client_secret"].required = adding
            if adding:
                self.fields["client_secret"].help_text = _(
                    "Write-only: once saved it is shown only as a fingerprint."
                )

    def clean_client_secret(self) -> str:
        secret: str = self.cleaned_data.get("client_secret", "")
        if any(ord(c) < 32 for c in secret):
            raise forms.ValidationError(_("The secret cannot contain control characters."))
        return secret

    #: Fields that decide where the secret and every company's refresh token are sent; the
    #: stored secret is bound to them (one changed behind the form's back makes it refused).
    DESTINATION_FIELDS = ApiClient.SECRET_DESTINATION_FIELDS

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        # Compared with the stored values (the instance is updated only after clean()).
        changed = [
            name
            for name in self.DESTINATION_FIELDS
            if name in cleaned and cleaned[name] != getattr(self.instance, name)
        ]
        if changed and not self.instance._state.adding and not cleaned.get("client_secret"):
            # Otherwise anyone allowed to edit the client could send its write-only secret, and
            # all its companies' refresh tokens, to a server of their choosing.
            self.add_error(
                "client_secret",
                _("Enter the client secret again to change where it is sent (%(fields)s).")
                % {"fields": ", ".join(str(self.fields[name].label) for name in changed)},
            )
        if "provider_options" in cleaned:
            errors = self.provider_options_errors(cleaned.get("provider"), cleaned["provider_options"])
            if errors:
                self.add_error("provider_options", errors)
        return cleaned

    @staticmethod
    def provider_options_errors(provider_key: str | None, options: Any) -> list[str]:
        """One message per bad option, through the provider's own ``validate_options``."""
        provider_class = provider_classes().get(provider_key or "", Provider)
        try:
            provider_class.validate_options(options)
        except ProviderError as err:
            whole = err.message
        else:
            return []
        if not isinstance(options, dict):
            return [whole]
        messages = []
        for name, value in options.items():
            try:
                provider_class.validate_options({name: value})
            except ProviderError as err:
                message = err.message
                if message.startswith(PROVIDER_OPTIONS_PREFIX):
                    message = message[len(PROVIDER_OPTIONS_PREFIX) :]
                if not message.startswith(f"{name}:"):  # keep option names as written
                    message = message[:1].upper() + message[1:]
                messages.append(message)
        # A provider may also check options together; then only the whole message says why.
        return messages or [whole]

    def save(self, commit: bool = True) -> ApiClient:
        client: ApiClient = super().save(commit=False)
        secret = self.cleaned_data.get("client_secret")
        if secret:
            client.client_secret = secret
        if commit:
            client.save()
            self.save_m2m()  # public once save(commit=False) has run
        return client


class InvitationForm(forms.Form):
    """What an invitation link carries: an optional reference and how long it stays valid."""

    reference = forms.CharField(
        label=_("Reference"),
        max_length=255,
        required=False,
        help_text=_("Your own label for the company that will connect (kept on the company)."),
    )
    max_age_hours = forms.IntegerField(
        label=_("Valid for (hours)"),
        min_value=1,
        max_value=24 * 366,
        help_text=_("The link stops working after this many hours."),
    )

    max_uses = forms.IntegerField(
        label=_("Maximum uses"),
        min_value=1,
        max_value=10000,
        initial=1,
        required=False,  # empty: 1
        help_text=_(
            "How many connections the link may make. Keep 1 for a link sent to one merchant: "
            "anyone holding the link can use it."
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        default_seconds = app_settings.INVITATION_MAX_AGE
        self.fields["max_age_hours"].initial = max(1, round(default_seconds / 3600))

    def clean_reference(self) -> str:
        reference: str = self.cleaned_data["reference"]
        if any(ord(c) < 32 for c in reference):
            raise forms.ValidationError(_("The reference must be printable characters only."))
        return reference

    def clean_max_uses(self) -> int:
        return int(self.cleaned_data.get("max_uses") or 1)

    @property
    def max_age(self) -> int:
        """The lifetime in seconds."""
        return int(self.cleaned_data["max_age_hours"]) * 3600


class InvitationAdminForm(forms.ModelForm):
    """A new invitation from the invitations list: the API client, reference, uses and lifetime."""

    max_age_hours = InvitationForm.base_fields["max_age_hours"]

    class Meta:
        model = Invitation
        fields = ["client", "reference", "max_uses"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The admin's read-only page of an existing invitation builds this form without its fields.
        if "client" in self.fields:
            client_field = cast("forms.ModelChoiceField", self.fields["client"])
            client_field.queryset = ApiClient.objects.filter(is_active=True)
        if "max_uses" in self.fields:
            self.fields["max_uses"].widget.attrs["min"] = 1
        if "max_age_hours" in self.fields:
            self.fields["max_age_hours"].initial = max(1, round(app_settings.INVITATION_MAX_AGE / 3600))

    clean_reference = InvitationForm.clean_reference

    def clean_max_uses(self) -> int:
        value = int(self.cleaned_data["max_uses"])
        if not 1 <= value <= 10000:
            raise forms.ValidationError(_("Between 1 and 10000."))
        return value

    @property
    def max_age(self) -> int:
        return int(self.cleaned_data["max_age_hours"]) * 3600


class CompanyInvitationForm(forms.Form):
    """A new invitation for a company that must connect again, e-mailed when an address is given."""

    email = forms.EmailField(
        label=_("E-mail to"),
        required=False,
        help_text=_("Leave empty to only show the link (copy it into your own message)."),
    )
    max_age_hours = InvitationForm.base_fields["max_age_hours"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["max_age_hours"].initial = max(1, round(app_settings.INVITATION_MAX_AGE / 3600))

    @property
    def max_age(self) -> int:
        """The lifetime in seconds."""
        return int(self.cleaned_data["max_age_hours"]) * 3600
