"""The index page's form for one sandbox server's behaviour switches."""

from __future__ import annotations

from django import forms

from .models import SandboxBehaviour

__all__ = ["BehaviourForm"]

#: The longest delay the switch accepts: a minute, longer than any sane client timeout.
MAX_DELAY_MS = 60_000


class BehaviourForm(forms.ModelForm):
    class Meta:
        model = SandboxBehaviour
        fields = ["deny_authorization", "refresh_error", "delay_ms"]
        widgets = {"delay_ms": forms.NumberInput(attrs={"min": 0, "max": MAX_DELAY_MS, "step": 100})}

    def clean_delay_ms(self) -> int:
        delay_ms: int = self.cleaned_data["delay_ms"]
        if delay_ms > MAX_DELAY_MS:
            raise forms.ValidationError(f"At most {MAX_DELAY_MS} milliseconds.")
        return delay_ms
