# gpujob — everything a fresh machine needs goes through these targets.
#   make demo   fine-tune Whisper base on Greek speech on this CPU: WER before and after
#   make demo-hello  the progress-protocol example job (seconds)
#   make test   the full test suite (what CI runs); as root it apt-installs the Debian packages the tests
#               need (ffmpeg, docker.io, debootstrap, openssh, chromium), otherwise it names them
#   make test-fast  the fast tier: no daemons the tests start, no real Whisper model, nothing slow; 4 workers (pytest-xdist)
#   make bench  benchmarks: CLI start-up time, then the runner's data loading (CPU) and its training and
#               evaluation steps (GPU, where CUDA is present); extra flags via BENCH_ARGS="--json bench.json";
#               then the quickstart's time per stage (assets, zero-shot eval, encoder cache, training, final
#               eval) on this CPU and with oneDNN capped to AVX512_CORE_BF16 and AVX2, each in a subprocess
#               (three full jobs: tens of minutes); QUICKSTART_BENCH_ARGS=--short for 4 steps (CI)
#   make gpu-check  on a GPU machine: the runner's train/evaluate (tiny model, bf16), whisper-small for a few
#               steps, the benchmark against the targets; writes docs/bench/<gpu>.json. Offline: run
#               GPU_CHECK_ARGS=--prepare-only here first and copy .assets/gpu-check over (docs/performance.md)
#   make image  the job image (CUDA) on the Docker engine at DOCKER_HOST; make image-cpu its cpu variant
#   make lock   re-resolve images/requirements.lock from images/requirements.in (needs PyPI)

PYTHON ?= python3
# The CPU build of torch (a wheel of it ships with these machines); override for CUDA: make TORCH=torch
TORCH  ?= torch==2.13.0
VENV   ?= .venv
BENCH_ARGS ?=
QUICKSTART_BENCH_ARGS ?=
GPU_CHECK_ARGS ?=
PY     := $(VENV)/bin/python
GPUJOB := $(VENV)/bin/gpujob
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# both installs: the venv (python3-venv first where PYTHON lacks it), then pip with the pinned torch
VENV_NEW := bash dev/system-packages.sh venv $(PYTHON) && { test -x $(PY) || $(PYTHON) -m venv $(VENV); }
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check '$(TORCH)'

.PHONY: install test test-fast assets assets-short demo demo-hello bench gpu-check docs image image-cpu lock clean

# gpujob (editable) and, beside it, the development package dev/ (gpujob_dev: the demo and test assets,
# the benchmark; not part of gpujob's wheel)
$(STAMP): pyproject.toml dev/pyproject.toml
	$(VENV_NEW)
	$(PIP_INSTALL) -e '.[runner,trackers,kubernetes,docker,host,storage,export,plot,ui,test]' -e ./dev
	touch $@

# What the demo and its assets need, and no more (the runner's libraries and gpujob_dev): a newcomer's first
# `make demo` does not wait for the trackers, cloud clients, dashboard and test tools. `make test` adds them.
$(DEMO_STAMP): pyproject.toml dev/pyproject.toml
	$(VENV_NEW)
	$(PIP_INSTALL) -e '.[runner]' -e ./dev
	touch $@

install: $(STAMP)

test: $(STAMP)
	bash dev/system-packages.sh test
	$(PY) -m pytest -q --durations=30

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 4 --dist loadgroup -m "not slow and not daemon and not model"

assets: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m gpujob_dev.convert_ct2 --out .assets/whisper-base
	$(PY) -m gpujob_dev.greek_speech .assets/greek-speech --heldout 40 \
		--extra-sentences dev/gpujob_dev/greek_sentences_train.txt

# jobs/quickstart-export.yaml's eval set: the first 12 held-out clips (hard links)
assets-short: assets
	mkdir -p .assets/greek-speech-short/heldout
	head -13 .assets/greek-speech/heldout/metadata.csv > .assets/greek-speech-short/heldout/metadata.csv
	for f in $$(tail -n +2 .assets/greek-speech-short/heldout/metadata.csv | cut -d, -f1); do \
		ln -f .assets/greek-speech/heldout/$$f .assets/greek-speech-short/heldout/$$f; done

demo: assets
	$(GPUJOB) submit jobs/quickstart.yaml --follow
	$(GPUJOB) list
	$(GPUJOB) status

demo-hello: $(STAMP)
	$(GPUJOB) validate jobs/hello.yaml
	$(GPUJOB) submit jobs/hello.yaml --follow
	$(GPUJOB) list
	$(GPUJOB) status
	$(GPUJOB) logs --tail 5

bench: $(STAMP)
	$(PY) scripts/bench_startup.py
	HF_HUB_OFFLINE=1 $(PY) -m gpujob_dev.bench $(BENCH_ARGS)
	HF_HUB_OFFLINE=1 $(PY) -m gpujob_dev.bench_quickstart --assets $(QUICKSTART_BENCH_ARGS)

gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m gpujob_dev.gpu_check $(GPU_CHECK_ARGS)

docs: $(STAMP)
	$(PY) scripts/gen_spec_docs.py

image: $(STAMP)
	$(GPUJOB) image build

image-cpu: $(STAMP)
	$(GPUJOB) image build --variant cpu

lock: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check 'uv==0.13.8'
	$(PY) scripts/lock_image.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info cli/*.egg-info dev/*.egg-info
