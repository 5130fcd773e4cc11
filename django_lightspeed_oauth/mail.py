"""E-mails the app sends, through Django's mail framework (``EMAIL_BACKEND``, ``DEFAULT_FROM_EMAIL``)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.module_loading import import_string

from .conf import app_settings
from .models import ApiClient, ConnectedCompany, Invitation

logger = logging.getLogger(__name__)


def _local(moment):
    return timezone.localtime(moment) if timezone.is_aware(moment) else moment


def send_invitation(
    client: ApiClient, url: str, to: str, *, max_age: int | None = None, company_name: str = ""
) -> None:
    """E-mail the invitation link ``url`` (from ``client.invitation_url``) to the address ``to``.

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


def invitation_address(company: ConnectedCompany) -> str:
    """The merchant's e-mail address for ``company``, from the ``INVITATION_EMAIL`` hook ("" when none)."""
    path = app_settings.INVITATION_EMAIL
    if not path:
        return ""
    try:
        hook = import_string(path)
    except ImportError as err:
        raise ImproperlyConfigured(
            f'LIGHTSPEED_OAUTH["INVITATION_EMAIL"]: cannot import {path!r} ({err}).'
        ) from err
    return str(hook(company) or "").strip()


def company_invitation_url(
    company: ConnectedCompany,
    *,
    max_age: int | None = None,
    base_url: str = "",
    created_by: Any = None,
    email: str = "",
) -> str:
    """A new single-use invitation for ``company``: its API client and its reference, so the new
    connection updates the same row. Returns the link, absolute when possible."""
    _invitation, token = Invitation.objects.create_for(
        company.client,
        reference=company.reference,
        max_age=max_age,
        created_by=created_by,
        company=company,
        email=email,
    )
    url = Invitation.url_for(token)
    if url.startswith("/") and base_url:
        url = base_url.rstrip("/") + url
    return url


def send_company_invitation(
    company: ConnectedCompany,
    to: str,
    *,
    max_age: int | None = None,
    base_url: str = "",
    created_by: Any = None,
) -> str:
    """E-mail a new invitation link for ``company`` to ``to``; return the link."""
    url = company_invitation_url(company, max_age=max_age, base_url=base_url, created_by=created_by, email=to)
    send_invitation(company.client, url, to, max_age=max_age, company_name=company.name or company.company_id)
    return url


def email_on_reauthorization(sender: Any, company: ConnectedCompany, **kwargs: Any) -> None:
    """Receiver of ``reauthorization_required``: with ``REAUTHORIZATION_EMAIL`` on, e-mail a new link.

    The signal is sent once per fall into "re-authorization required" (the state change that sends
    it happens once), so the merchant gets one e-mail each time. Needs ``SITE_URL`` (the e-mail needs
    an absolute link) and an address from the ``INVITATION_EMAIL`` hook; without them it logs why.
    """
    if not app_settings.REAUTHORIZATION_EMAIL:
        return
    if not app_settings.SITE_URL:
        logger.error(
            "Company %s needs re-authorization but no invitation was e-mailed: REAUTHORIZATION_EMAIL "
            "needs SITE_URL for an absolute link.",
            company.pk,
        )
        return
    address = invitation_address(company)
    if not address:
        logger.warning(
            "Company %s needs re-authorization; the INVITATION_EMAIL hook gave no address to e-mail.",
            company.pk,
        )
        return
    if not company.client.is_active:
        logger.warning(
            "Company %s needs re-authorization; its API client is not active: no e-mail.", company.pk
        )
        return
    send_company_invitation(company, address)
    logger.info("Company %s needs re-authorization: e-mailed a new invitation link.", company.pk)
