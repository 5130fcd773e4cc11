"""Every command refuses a --client or --company that names nothing: exit status 2 and a message."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command, execute_from_command_line

from django_lightspeed_oauth.models import ConnectedCompany
from django_lightspeed_oauth.testing import FakeTokenEndpoint, make_client, make_company

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "command, args",
    [
        ("refresh_lightspeed_tokens", ["--client", "shopp"]),
        ("refresh_lightspeed_tokens", ["--client", "shop", "--client", "shopp", "--dry-run"]),
        ("lightspeed_status", ["--client", "shopp"]),
        ("lightspeed_status", ["--json", "--client", "shopp"]),
    ],
)
def test_an_unknown_client_is_an_error_naming_the_known_ones(command, args):
    make_client(slug="shop")
    with pytest.raises(CommandError, match=r"No API client with slug 'shopp'\. API clients: shop\.") as error:
        call_command(command, *args, stdout=StringIO(), stderr=StringIO())
    assert error.value.returncode == 2


@pytest.mark.parametrize("value", ["no-such-company", "999999"])
def test_an_unknown_company_is_an_error(value):
    company = make_company(make_client(slug="shop"), expires_in=60)
    with FakeTokenEndpoint(company.client) as fake:
        with pytest.raises(
            CommandError, match=f"No connected company with company id or primary key '{value}'"
        ) as error:
            call_command("refresh_lightspeed_tokens", "--company", company.company_id, "--company", value)
        assert fake.requests == []  # nothing was refreshed before the error
    assert error.value.returncode == 2


def test_a_company_of_another_client_is_unknown_within_the_chosen_client():
    make_client(slug="shop")
    other = make_company(make_client(slug="other"), expires_in=60)
    with pytest.raises(
        CommandError, match=r"API client\(s\) shop with company id .*" + other.company_id
    ) as error:
        call_command("refresh_lightspeed_tokens", "--client", "shop", "--company", other.company_id)
    assert error.value.returncode == 2


def test_a_company_is_found_by_company_id_or_primary_key_in_any_status():
    client = make_client(slug="shop")
    gone = make_company(client, expires_in=60, status=ConnectedCompany.Status.DISCONNECTED)
    out = StringIO()
    call_command(
        "refresh_lightspeed_tokens",
        "--company",
        gone.company_id,
        "--company",
        str(gone.pk),
        "-v",
        "2",
        stdout=out,
    )
    assert re.search(r"Considered\s+0", out.getvalue())  # known, and not due


def test_from_the_shell_the_exit_status_is_2_with_the_message_on_stderr(capsys):
    make_client(slug="shop")
    with pytest.raises(SystemExit) as exit:
        execute_from_command_line(["manage.py", "refresh_lightspeed_tokens", "--client", "nope"])
    assert exit.value.code == 2
    assert "No API client with slug 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    ["lightspeed_invite", "lightspeed_status", "refresh_lightspeed_tokens", "rotate_lightspeed_keys"],
)
def test_every_command_prints_its_help(command):
    from django.core.management import load_command_class

    text = (
        load_command_class("django_lightspeed_oauth", command)
        .create_parser("manage.py", command)
        .format_help()
    )
    assert text.startswith("usage: manage.py " + command)
