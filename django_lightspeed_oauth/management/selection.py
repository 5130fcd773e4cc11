"""Checks shared by the management commands: a ``--client`` or ``--company`` that names nothing is an error.

A typo in a filter would otherwise select nothing and look like success (for instance a refresh run
that "refreshed 0 companies" from cron). Such errors exit with status 2, like argparse's own.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.management.base import CommandError
from django.db.models import Q
from django.utils.translation import gettext as _

from ..models import ApiClient, ConnectedCompany

#: Exit status of a command given a value that names nothing (argparse uses 2 for bad arguments too).
USAGE_ERROR = 2


def usage_error(message: str) -> CommandError:
    return CommandError(message, returncode=USAGE_ERROR)


def check_clients(slugs: Iterable[str]) -> list[str]:
    """The slugs, once each; :class:`CommandError` (exit 2) naming those no API client has."""
    wanted = list(dict.fromkeys(slugs))
    if not wanted:
        return wanted
    known = set(ApiClient.objects.filter(slug__in=wanted).values_list("slug", flat=True))
    unknown = [slug for slug in wanted if slug not in known]
    if unknown:
        every = ", ".join(ApiClient.objects.order_by("slug").values_list("slug", flat=True)) or _("none")
        raise usage_error(
            _("No API client with slug %(unknown)s. API clients: %(known)s.")
            % {"unknown": ", ".join(repr(s) for s in unknown), "known": every}
        )
    return wanted


def company_match(company_id: str) -> Q:
    """Companies a ``--company`` value names: a Lightspeed company id, or a primary key."""
    match = Q(company_id=company_id)
    if str(company_id).isdigit():
        match |= Q(pk=int(company_id))
    return match


def check_companies(company_ids: Iterable[str], clients: Iterable[str] = ()) -> list[str]:
    """The ids, once each; :class:`CommandError` (exit 2) naming those no company (of ``clients``) has."""
    wanted = list(dict.fromkeys(company_ids))
    companies = ConnectedCompany.objects.all()
    clients = list(clients)
    if clients:
        companies = companies.filter(client__slug__in=clients)
    unknown = [value for value in wanted if not companies.filter(company_match(value)).exists()]
    if unknown:
        names = ", ".join(repr(v) for v in unknown)
        if clients:
            message = _(
                "No connected company of the API client(s) %(clients)s with company id or primary key "
                "%(unknown)s."
            ) % {"clients": ", ".join(clients), "unknown": names}
        else:
            message = _("No connected company with company id or primary key %(unknown)s.") % {
                "unknown": names
            }
        raise usage_error(message)
    return wanted
