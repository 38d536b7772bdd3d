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

# The demo needs the registry and the simulator; the car alone needs only `pip install .` (see README).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[server,simulator]'
	touch $@

$(DEVSTAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/ota demo --data-dir $(DATA)

# The dashboard browser tests drive Debian's Chromium with Playwright (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

# Lint first: a wrong-way import or a type error fails in seconds, before the suite's minutes.
# Two pytest workers (pytest-xdist), one test file each at a time: a file's module-scoped server stays in one
# worker.  Much of the suite waits on servers, links and ticks, so two workers fit two cores (15 -> ~10 min).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: lint chromium
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff; mypy over models/, client/, server/, simulator/ and cli/; the import contracts (both set in pyproject.toml).
lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Generic diff tools the codec benchmark compares against (Debian packages).
bench-tools:
	@command -v bsdiff >/dev/null && command -v xdelta3 >/dev/null && command -v zstd >/dev/null && command -v wrk >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq bsdiff xdelta3 zstd wrk)

bench: $(STAMP) bench-tools
	$(PY) bench/codec.py

# Regenerate every shipped model artifact (needs the [train] extra: PyTorch CPU): the road-sign zoo, then
# the road-sign version transfer-learned from the real ImageNet SqueezeNet (models/pretrained).
train: | $(PY)
	$(PY) -m pip install --quiet -e '.[train]'
	$(PY) -m models.training.train --out models/zoo
	$(PY) -m models.training.transfer --out models/pretrained

clean:
	rm -rf $(DATA) .pytest_cache test-artifacts
