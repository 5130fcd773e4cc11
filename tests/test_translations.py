"""The shipped translations: complete for what merchants see, placeholders intact, chosen by the browser."""

from __future__ import annotations

import ast
import gettext
import re
from pathlib import Path

import pytest
from django.utils.translation.template import templatize

import django_lightspeed_oauth

PACKAGE = Path(django_lightspeed_oauth.__file__).resolve().parent
LANGUAGES = ["fr", "nl", "de", "es"]
# What a merchant (or a staff member starting a flow) sees: the flow's pages, the invitation
# e-mail, and the titles and messages of the flow's error pages (views.py).
MERCHANT_TEMPLATES = sorted(
    path
    for path in (PACKAGE / "templates" / "lightspeed_oauth").rglob("*")
    if path.suffix in (".html", ".txt")
)
STRING = r"""u?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
TEMPLATE_CALL = re.compile(rf"\b(gettext|ngettext|pgettext|npgettext)\(({STRING})(?:,\s*({STRING}))?")
PLACEHOLDER = re.compile(r"%\(\w+\)[-+ #0]*\d*(?:\.\d+)?[sdifr]|\{\w+\}")


def template_messages(path: Path) -> set[tuple[str, ...]]:
    """(msgid,) or (msgid, plural) of every string the template marks for translation."""
    found = set()
    for kind, first, second in TEMPLATE_CALL.findall(templatize(path.read_text(), origin=str(path))):
        assert not kind.startswith(("pgettext", "npgettext")), f"{path.name}: contexts are not expected"
        first = ast.literal_eval(first)
        found.add((first, ast.literal_eval(second)) if kind == "ngettext" else (first,))
    return found


def view_messages() -> set[tuple[str, ...]]:
    """The strings views.py passes to gettext (imported as _)."""
    tree = ast.parse((PACKAGE / "views.py").read_text())
    return {
        (node.args[0].value,)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def merchant_messages() -> dict[tuple[str, ...], str]:
    messages = dict.fromkeys(view_messages(), "views.py")
    for path in MERCHANT_TEMPLATES:
        for message in template_messages(path):
            messages.setdefault(message, path.name)
    return messages


def catalogue(language: str) -> gettext.GNUTranslations:
    with open(PACKAGE / "locale" / language / "LC_MESSAGES" / "django.mo", "rb") as mo:
        return gettext.GNUTranslations(mo)


def test_the_merchant_facing_strings_are_found():
    messages = merchant_messages()
    # A sample from each source, so that a broken extraction cannot pass by finding nothing.
    assert ("Connect your Lightspeed account",) in messages
    assert ("This link works until %(expires)s (%(tz)s).",) in messages
    assert ("Connection cancelled",) in messages
    assert ("Choose the business to connect",) in messages
    assert ("Try again",) in messages
    assert ("Hello,",) in messages
    assert len(messages) > 60


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_merchant_facing_string_is_translated(language):
    translated = catalogue(language)._catalog  # type: ignore[attr-defined]
    missing = []
    for message, source in sorted(merchant_messages().items()):
        if len(message) == 2:
            forms = [translated.get((message[0], n)) for n in (0, 1)]
            ok = all(forms)
        else:
            ok = bool(translated.get(message[0]))
        if not ok:
            missing.append(f"{source}: {message[0]!r}")
    assert not missing, f"{len(missing)} strings lack a {language} translation:\n" + "\n".join(missing)


@pytest.mark.parametrize("language", LANGUAGES)
def test_translations_keep_every_placeholder(language):
    wrong = []
    for key, text in catalogue(language)._catalog.items():  # type: ignore[attr-defined]
        if key == "":
            continue  # the header
        msgid = key[0] if isinstance(key, tuple) else key
        if isinstance(key, tuple) and key[1] == 0:
            # A singular form may leave out the count ("this company" for "%(counter)s companies").
            if not set(PLACEHOLDER.findall(text)) <= set(PLACEHOLDER.findall(msgid)):
                wrong.append(f"{msgid!r} -> {text!r}")
            continue
        if isinstance(key, tuple):
            continue  # plural forms are checked against the plural msgid below
        if sorted(PLACEHOLDER.findall(text)) != sorted(PLACEHOLDER.findall(msgid)):
            wrong.append(f"{msgid!r} -> {text!r}")
    assert not wrong, "\n".join(wrong)


def read_po(path: Path) -> dict:
    """The translated entries of a .po file, keyed as GNUTranslations keys them (no fuzzy ones)."""
    entries, entry, field = {}, {}, ""

    def flush() -> None:
        if entry.get("msgid") and "fuzzy" not in entry.get("flags", ""):
            if "msgid_plural" in entry:
                for n in (0, 1):
                    if entry.get(f"msgstr[{n}]"):
                        entries[(entry["msgid"], n)] = entry[f"msgstr[{n}]"]
            elif entry.get("msgstr"):
                entries[entry["msgid"]] = entry["msgstr"]

    for line in [*path.read_text().splitlines(), ""]:
        if not line.strip():
            flush()
            entry, field = {}, ""
        elif line.startswith("#,"):
            entry["flags"] = line
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            entry[field] += ast.literal_eval(line)
        else:
            field, _, value = line.partition(" ")
            entry[field] = ast.literal_eval(value)
    return entries


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_compiled_catalogue_matches_its_source(language):
    # The .mo ships beside the .po; a .po edited without compiling would leave merchants in English.
    source = read_po(PACKAGE / "locale" / language / "LC_MESSAGES" / "django.po")
    compiled = {k: v for k, v in catalogue(language)._catalog.items() if k != ""}  # type: ignore[attr-defined]
    assert compiled == source


def test_a_french_browser_gets_the_invitation_page_in_french(client, api_client):
    url = api_client.invitation_url(reference="shop-fr", max_age=3600)
    response = client.get(url, HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9,en;q=0.5")
    page = response.content.decode()
    assert response.status_code == 200
    assert '<html lang="fr">' in page
    assert "Connectez votre compte Lightspeed" in page
    assert "Continuer vers Lightspeed" in page
    assert "Ce lien fonctionne jusqu\u2019au" in page and "(UTC)" in page
    assert ".." not in page

    english = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Connect your Lightspeed account" in english
    assert "This link works until" in english and "(UTC)." in english and ".." not in english


@pytest.mark.parametrize(
    "language, title",
    [("nl", "Ongeldige uitnodiging"), ("de", "Ungültige Einladung"), ("es", "Invitación no válida")],
)
def test_the_error_pages_follow_the_browser_language(client, db, language, title):
    response = client.get("/lightspeed/invite/not-a-real-token/", HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code in (400, 404)
    assert title in response.content.decode()
