# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
DATA   ?= .ota-data

.PHONY: demo test chromium lint bench bench-tools train clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/ota demo --data-dir $(DATA)

# The dashboard browser tests drive Debian's Chromium with Playwright (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

test: $(DEVSTAMP) chromium
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy models client

# Generic diff tools the codec benchmark compares against (Debian packages).
bench-tools:
	@command -v bsdiff >/dev/null && command -v xdelta3 >/dev/null && command -v zstd >/dev/null && command -v wrk >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq bsdiff xdelta3 zstd wrk)

bench: $(STAMP) bench-tools
	$(PY) bench/codec.py

# Regenerate every shipped model artifact (needs the [train] extra: PyTorch CPU).
train: | $(PY)
	$(PY) -m pip install --quiet -e '.[train]'
	$(PY) -m models.training.train --out models/zoo

clean:
	rm -rf $(DATA) .pytest_cache test-artifacts
