# Development tasks for django-lightspeed-oauth (GNU make).
#
#   make test               the test suite (a SQLite file; set DATABASE_URL for PostgreSQL or MySQL)
#   make demo               the demo site at http://127.0.0.1:8000/ with the sandbox servers (admin / admin)
#   make browser-test       drive headless Chromium through the admin and the authorization flow
#   make screenshots        the browser tests, saving the README's admin screenshots to docs/screenshots/
#   make test-py313-django61   the suite on one supported combination, in its own virtualenv
#                           (.venv-py313-django61); also py311-django52, py312-django52, py312-django60,
#                           py312-django61, py313-django52, py313-django60
#   make test-matrix        the suite on every supported combination (SQLite)
#   make migrations-check   fail when a model change has no migration
#   make messages           update the .po files from the code and templates (needs GNU gettext), then
#                           compile them to the .mo files that ship in the package
#   make dist               build the sdist and the wheel into dist/ (no warnings allowed), twine check them,
#                           and check the wheel holds exactly the package
#   make dist-test          install the wheel in a fresh virtualenv and run the sdist's tests against it
#   make lint               ruff check and ruff format --check (the pinned ruff, in the virtualenv)
#   make typecheck          mypy with django-stubs on the package (settings in pyproject.toml)
#   make format             ruff format and the safe ruff fixes
#   make benchmark          run benchmarks/refresh.py
#   make clean              remove the virtualenv, caches, artifacts and the demo database
#
# Each target creates the virtualenv $(VENV) when needed; an extra is installed again only when
# pyproject.toml changes (stamp files in the virtualenv).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Keep the stamp files that pattern rules make.
.SECONDARY:

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=

DEMO_HOST ?= 127.0.0.1
DEMO_PORT ?= 8000
DEMO_URL := http://$(DEMO_HOST):$(DEMO_PORT)
DEMO_DATABASE_URL ?= sqlite:///$(CURDIR)/testproject/db.sqlite3
MANAGE := $(PY) testproject/manage.py

CHROMIUM ?= /usr/bin/chromium

# The database driver DATABASE_URL needs, as an extra of pyproject.toml (none for SQLite).
DB_SCHEME := $(firstword $(subst :, ,$(DATABASE_URL)))
ifneq (,$(filter postgres postgresql pgsql postgis,$(DB_SCHEME)))
DB_EXTRA := postgres
else ifneq (,$(filter mysql mysql2 mysqlgis,$(DB_SCHEME)))
DB_EXTRA := mysql
else
DB_EXTRA :=
endif
DB_STAMP := $(if $(DB_EXTRA),$(VENV)/.installed-$(DB_EXTRA))

.PHONY: help test faketime test-matrix dist dist-test lint typecheck format demo browser-test screenshots chromium migrations-check messages benchmark clean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# One stamp per extra of pyproject.toml: $(VENV)/.installed-test, -demo, -browser, -postgres, -mysql...
$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e ".[$*]"
	@touch $@

test: $(VENV)/.installed-test $(DB_STAMP) faketime
	$(if $(DJANGO_SPEC),$(PIP) install --quiet "$(DJANGO_SPEC)")
	@echo "Database: $(if $(DATABASE_URL),$(DB_SCHEME) (from DATABASE_URL),SQLite) with Django $$($(PY) -c 'import django; print(django.get_version())')"
	$(BIN)/pytest -m "not browser" $(PYTEST_ARGS)

# The supported combinations (the classifiers in pyproject.toml say the same): Django 5.2 LTS on
# Python 3.11, 3.12 and 3.13; Django 6.0 and 6.1 (which need Python 3.12 or later) on 3.12 and 3.13.
# The interpreters come from pyenv unless PYTHON311 / PYTHON312 / PYTHON313 name them.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
python_for = $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1)))),$(shell command -v python$(1)))
PYTHON311 ?= $(call python_for,3.11)
PYTHON312 ?= $(call python_for,3.12)
PYTHON313 ?= $(call python_for,3.13)
MATRIX := py311-django52 py312-django52 py312-django60 py312-django61 py313-django52 py313-django60 py313-django61
DJANGO_SPEC_django52 := Django>=5.2,<5.3
DJANGO_SPEC_django60 := Django>=6.0,<6.1
DJANGO_SPEC_django61 := Django>=6.1,<6.2

.PHONY: $(addprefix test-,$(MATRIX))
test-matrix: $(addprefix test-,$(MATRIX))

# test-py312-django60: py312 -> $(PYTHON312), django60 -> Django>=6.0,<6.1
$(addprefix test-,$(MATRIX)): test-%:
	@py="$(PYTHON$(subst py,,$(word 1,$(subst -, ,$*))))"; \
	if [ -z "$$py" ] || [ ! -x "$$py" ]; then \
		echo "test-$*: no Python $(subst py,,$(word 1,$(subst -, ,$*))) found (set PYTHON$(subst py,,$(word 1,$(subst -, ,$*)))=/path/to/python)" >&2; exit 1; \
	fi; \
	$(MAKE) test VENV=.venv-$* PYTHON="$$py" DJANGO_SPEC="$(DJANGO_SPEC_$(word 2,$(subst -, ,$*)))"

migrations-check: $(VENV)/.installed-test
	$(BIN)/django-admin makemigrations --check --dry-run --settings tests.settings --pythonpath .

# The catalogues of the languages the app ships (fr, nl, de, es), file names only as locations so
# that a moved line does not rewrite every file. New strings arrive untranslated: translate them
# (tests/test_translations.py fails while a merchant-facing one is missing), then run it again.
LOCALES := fr nl de es
messages: $(VENV)/.installed-test
	cd django_lightspeed_oauth && $(BIN)/django-admin makemessages $(addprefix -l ,$(LOCALES)) \
		--add-location file --no-wrap --settings tests.settings --pythonpath ..
	cd django_lightspeed_oauth && $(BIN)/django-admin compilemessages --settings tests.settings --pythonpath ..

# The build sees only the files git knows (tracked, or new and not ignored), copied to a scratch
# directory: no stray cache or database gets into the sdist. Any warning of the build fails it.
dist: $(VENV)/.installed-build
	rm -rf dist build django_lightspeed_oauth.egg-info
	@src=$$(mktemp -d); trap 'rm -rf "$$src" "$$src.log"' EXIT; \
	git ls-files -z --cached --others --exclude-standard \
		| while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done \
		| tar --null -T - -cf - | tar -xf - -C "$$src"; \
	if ! (cd "$$src" && env -u PYTHONDONTWRITEBYTECODE $(PY) -m build --outdir "$(CURDIR)/dist" .) >"$$src.log" 2>&1; then \
		cat "$$src.log"; exit 1; \
	fi; \
	if grep -i "warning" "$$src.log"; then echo "dist: the build printed the warnings above" >&2; exit 1; fi; \
	ls dist
	$(BIN)/twine check --strict dist/*
	$(PY) .ci/check_wheel.py dist/*.whl

# The wheel in a fresh virtualenv (newest Python), the tests from the unpacked sdist, whose own copy
# of the package is removed so that every import comes from the installed wheel.
DIST_PYTHON ?= $(or $(PYTHON313),$(PYTHON))
DIST_VENV ?= .venv-dist
DIST_TEST_DIR ?= .dist-test
dist-test: dist
	rm -rf $(DIST_VENV) $(DIST_TEST_DIR)
	$(DIST_PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install --quiet "$$(ls dist/*.whl)[test]"
	mkdir $(DIST_TEST_DIR)
	tar -xzf dist/*.tar.gz -C $(DIST_TEST_DIR) --strip-components=1
	rm -r $(DIST_TEST_DIR)/django_lightspeed_oauth
	cd $(DIST_TEST_DIR) && $(abspath $(DIST_VENV))/bin/python -c \
		'import django, django_lightspeed_oauth as p; print("Testing", p.__file__, "with Django", django.get_version()); assert "site-packages" in p.__file__'
	cd $(DIST_TEST_DIR) && $(abspath $(DIST_VENV))/bin/pytest -m "not browser" -p no:cacheprovider $(PYTEST_ARGS)

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test $(VENV)/.installed-typecheck
	$(BIN)/mypy

format: $(VENV)/.installed-lint
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The clock-skew test runs a process under Debian's faketime (on PostgreSQL and MySQL).
faketime:
	@if ! command -v faketime >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "Installing faketime with apt-get"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null; \
		else \
			echo "faketime is missing: the clock-skew test needs it (Debian: apt-get install faketime)." >&2; \
		fi; \
	fi

chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "Installing Chromium with apt-get"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "$(CHROMIUM) is missing: install Chromium (Debian: apt-get install chromium) or set CHROMIUM=/path." >&2; \
			exit 1; \
		fi; \
	fi
	@"$(CHROMIUM)" --version 2>/dev/null

# pytest exits 5 when it collected nothing: a browser run that ran no test is a failure.
browser-test: $(VENV)/.installed-test $(VENV)/.installed-browser chromium
	@rc=0; CHROMIUM="$(CHROMIUM)" LIGHTSPEED_BROWSER_REQUIRED=1 $(BIN)/pytest -m browser $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "browser-test: no browser test was collected" >&2; exit 1; fi; \
	exit $$rc

screenshots: export UPDATE_SCREENSHOTS = 1
screenshots: browser-test

demo: export DATABASE_URL = $(DEMO_DATABASE_URL)
demo: export DEMO_URL := $(DEMO_URL)
demo: $(VENV)/.installed-demo
	@# Commands run from another shell read it (testproject/settings.py): they reach this demo's sandbox.
	@echo '$(DEMO_URL)' > testproject/.demo-url
	$(MANAGE) migrate --noinput -v 0
	$(MANAGE) lightspeed_demo --base-url $(DEMO_URL)
	@$(MANAGE) refresh_lightspeed_tokens --every 30 -v 1 & refresher=$$!; \
	trap 'kill $$refresher 2>/dev/null || true; wait $$refresher 2>/dev/null || true' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP; \
	echo; \
	echo "Demo: $(DEMO_URL)/  (admin: $(DEMO_URL)/admin/, login admin / admin; sandbox: $(DEMO_URL)/lightspeed-sandbox/)"; \
	echo "The refresher beside the server looks every 30 seconds and renews a two-minute sandbox token once a minute of it is left. Ctrl-C stops both."; \
	echo; \
	$(MANAGE) runserver $(DEMO_HOST):$(DEMO_PORT)

benchmark: $(VENV)/.installed-test $(VENV)/.installed-benchmark
	$(PY) benchmarks/refresh.py $(BENCHMARK_ARGS)

clean:
	rm -rf $(VENV) $(DIST_VENV) $(DIST_TEST_DIR) .pytest_cache .ci-artifacts build dist *.egg-info testproject/db.sqlite3 testproject/.demo-url testproject/static testproject/celerybeat-schedule*
	find . -name __pycache__ -type d -not -path "./.git/*" -not -path "./.venv*" -prune -exec rm -rf {} +
