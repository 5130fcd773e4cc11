"""E-mails the app sends, through Django's mail framework (``EMAIL_BACKEND``, ``DEFAULT_FROM_EMAIL``)."""

from __future__ import annotations

from datetime import timedelta

from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.utils import timezone

from .conf import app_settings
from .models import ApiClient


def _local(moment):
    return timezone.localtime(moment) if timezone.is_aware(moment) else moment


def send_invitation(
    client: ApiClient, url: str, to: str, *, max_age: int | None = None, company_name: str = ""
) -> None:
    """E-mail the invitation link ``url`` (made by ``client.invitation_url``) to the address ``to``.

    The text comes from the templates ``lightspeed_oauth/email/invitation_subject.txt`` and
    ``lightspeed_oauth/email/invitation_message.txt`` (override them in your project), rendered in
    the active language with ``client``, ``url``, ``expires_at`` and ``company_name``.
    """
    seconds = int(max_age if max_age is not None else app_settings.INVITATION_MAX_AGE)
    context = {
        "client": client,
        "url": url,
        "expires_at": _local(timezone.now() + timedelta(seconds=seconds)),
        "company_name": company_name,
    }
    subject = " ".join(render_to_string("lightspeed_oauth/email/invitation_subject.txt", context).split())
    message = render_to_string("lightspeed_oauth/email/invitation_message.txt", context)
    send_mail(subject, message, None, [to])
