# gpujob — everything a fresh machine needs goes through these targets.
#   make demo   run the example job on the local backend and show list/status/logs
#   make test   the full test suite (what CI runs)
#   make bench  benchmarks (CLI start-up time; more arrive with the runner)

PYTHON ?= python3
# The CPU build of torch (a wheel of it ships with these machines); override for CUDA: make TORCH=torch
TORCH  ?= torch==2.13.0
VENV   ?= .venv
PY     := $(VENV)/bin/python
GPUJOB := $(VENV)/bin/gpujob
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check '$(TORCH)' -e '.[runner,assets,test]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(GPUJOB) validate jobs/hello.yaml
	$(GPUJOB) submit jobs/hello.yaml --follow
	$(GPUJOB) list
	$(GPUJOB) status
	$(GPUJOB) logs --tail 5

bench: $(STAMP)
	$(PY) scripts/bench_startup.py

docs: $(STAMP)
	$(PY) scripts/gen_spec_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info cli/*.egg-info
