# Two commands matter: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export LOYALTY_PROJECT_ROOT := $(CURDIR)
export AIRFLOW_HOME ?= $(CURDIR)/.local/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: install demo test test-ui docs sandbox api bench bench-api bench-live bench-live-share run db-stop constraints clean drills api-drills property compose-test

$(STAMP): requirements.txt requirements-docs.txt constraints.txt pyproject.toml devtools/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-docs.txt -c constraints.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e devtools
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m loyalty_moengage_devtools.cli demo $(ARGS)

# The browser test runs in `make test` when Chromium is there (Playwright is installed for it);
# without Chromium it is skipped, saying why. `make test-ui` installs Chromium (as root) and runs it.
CHROMIUM := $(shell command -v chromium || command -v chromium-browser)
UI_STAMP := $(VENV)/.installed-ui

$(UI_STAMP): requirements-ui.txt $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-ui.txt
	@touch $(UI_STAMP)

test: install $(if $(CHROMIUM),$(UI_STAMP))
	$(PY) -m pytest -q $(ARGS)

# The documentation site (mkdocs.yml, docs/) built in strict mode into .local/site;
# `$(PY) -m mkdocs serve` serves it with live reload at http://127.0.0.1:8000. NO_MKDOCS_2_WARNING
# silences Material's banner about its end of life (see requirements-docs.txt).
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

test-ui: install
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian's chromium"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "test-ui: Chromium is missing; as root: apt-get install -y chromium"; exit 1; fi; }
	@$(MAKE) --no-print-directory $(UI_STAMP)
	LOYALTY_UI_SHOTS=$(CURDIR)/docs/img $(PY) -m pytest -q -rs tests/loyalty_moengage/ui $(ARGS)

sandbox: install
	$(PY) -m loyalty_moengage_devtools.cli sandbox $(ARGS)

api: install
	$(PY) -m loyalty_moengage.cli api $(ARGS)

bench: install
	$(PY) -m loyalty_moengage_devtools.cli bench $(if $(SCALE),--scale) $(ARGS)

run: install
	$(PY) -m loyalty_moengage.cli run --program $(or $(PROGRAM),demo) $(if $(NIGHT),--night $(NIGHT)) $(if $(VERBOSE),--verbose)

bench-api: install
	$(PY) -m loyalty_moengage_devtools.cli bench-api $(ARGS)

# The live lane under a real scheduler: a writer at 50 rows/s for 30 min (a 5,000-row burst, held
# transactions) across the program's midnight, then the night and a backfill of it;
# writes bench/results/live-latest.json/.md. ARGS="--dsn postgresql://... --minutes 10" to change.
bench-live: install
	$(PY) -m loyalty_moengage_devtools.bench.live $(ARGS)

bench-live-share: install
	$(PY) -m loyalty_moengage_devtools.bench.live_share $(ARGS)

db-stop: install
	$(PY) -m loyalty_moengage.cli db stop

constraints: install
	$(PY) -m pip freeze --exclude-editable | sed '1i # Every package of a tested install (pip freeze). Regenerate with `make constraints`.' > constraints.txt

clean:
	-$(PY) -m loyalty_moengage.cli db stop
	rm -rf .local

drills: install
	$(PY) -m loyalty_moengage_devtools.drills $(ARGS)
	$(PY) -m loyalty_moengage_devtools.api_drills

# The API abuse drill: one leaked key, a rude network and a failing database against a real API
# server on a fresh database (devtools/loyalty_moengage_devtools/api_drills.py), under 2 minutes;
# writes bench/results/api-drills-latest.json/.md. ARGS="--dsn postgresql://..." picks the server.
api-drills: install
	$(PY) -m loyalty_moengage_devtools.api_drills $(ARGS)

# The property test of delivery: random schedules of answers, kills, lease expiries and overlapping
# loads against the sandbox (devtools/loyalty_moengage_devtools/delivery_property.py), 500 unless
# ARGS="--schedules 5000 --seed 1"; writes bench/results/delivery-property-latest.json.
property: install
	$(PY) -m loyalty_moengage_devtools.delivery_property $(ARGS)

# The project on Airflow's CeleryExecutor in Docker Compose, two workers, a night and a three-night
# backfill through the REST API; at most 20 minutes. Needs Docker (as root it installs and starts
# what is missing). Not part of `make test`. See docs/compose.md.
compose-test:
	$(PYTHON) devtools/loyalty_moengage_devtools/compose_test.py test $(ARGS)
