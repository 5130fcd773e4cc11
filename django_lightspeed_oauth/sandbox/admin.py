"""Admin pages to register sandbox clients and flip the sandbox servers' behaviour switches."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from ..admin import NulFreeChangeListMixin
from .models import SandboxBehaviour, SandboxClient


class SandboxClientForm(forms.ModelForm):
    # Write-only, like every secret the project handles: blank on change keeps the current one.
    client_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave blank to keep the current secret.",
    )

    class Meta:
        model = SandboxClient
        fields = ["flavour", "name", "client_id", "client_secret", "redirect_uri"]

    def clean_client_secret(self) -> str:
        secret: str = self.cleaned_data["client_secret"]
        if secret:
            return secret
        if self.instance.pk:
            return self.instance.client_secret
        raise forms.ValidationError("A new client needs a secret.")


@admin.register(SandboxClient)
class SandboxClientAdmin(NulFreeChangeListMixin, admin.ModelAdmin):
    form = SandboxClientForm
    list_display = ["client_id", "name", "flavour", "redirect_uri", "created_at"]
    list_filter = ["flavour"]
    search_fields = ["client_id", "name", "redirect_uri"]


@admin.register(SandboxBehaviour)
class SandboxBehaviourAdmin(NulFreeChangeListMixin, admin.ModelAdmin):
    list_display = ["flavour", "deny_authorization", "refresh_error", "delay_ms", "updated_at"]
    list_editable = ["deny_authorization", "refresh_error", "delay_ms"]
    list_filter = ["deny_authorization", "refresh_error"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # One row per flavour: the flavour of an existing row is fixed.
        return ["flavour"] if obj is not None else []
