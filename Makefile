# Two entry points (see README): `make book` builds the executed book, `make test` runs every test.
# Each creates .venv and installs what it needs on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SITE := build/site
# One OpenMP thread per process: two processes on two cores are 1.6x faster than one with two threads.
RUN := OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONHASHSEED=0

.PHONY: book test test-fast unit chapters html rehearsal venv base-model clean gpu-check-prepare gpu-check

book: chapters html
	@echo "The book: $(SITE)/_build/html/index.html"

test: unit chapters html rehearsal

venv: $(VENV)/.installed

# pyproject.toml declares version ranges; constraints.txt pins the versions the book is tested with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[train,eval,notebook,book,test]"
	$(PY) -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
	touch $@

unit: venv
	$(RUN) $(PY) -m pytest tests -n 2 --durations=10 --ignore=tests/site

# The unit tests not marked slow (no training loop, no wheel build, none over ~3 s): under 2 minutes on 2 cores.
test-fast: venv
	$(RUN) $(PY) -m pytest tests -n 2 --durations=10 -m "not slow" --ignore=tests/site

NBMAKE := $(RUN) $(PY) -m pytest --nbmake --nbmake-timeout=600 --overwrite -p no:cacheprovider --durations=0
FIRST := $(SITE)/notebooks/ch00_the_lab.ipynb

# Convert every chapter listed in _toc.yml to .ipynb under $(SITE), then execute each once, fresh,
# two at a time, the longest first (each worker takes the next chapter when its last one ends). The
# first chapter runs last: it shows the times recorded for the others.
NBMAKE_TWO := $(NBMAKE) -n 2 --dist load --maxschedchunk 1
chapters: venv
	$(PY) scripts/stage_book.py $(SITE)
	$(NBMAKE_TWO) --junitxml=$(SITE)/chapter_times.xml $$($(PY) scripts/stage_book.py --order $(SITE)/notebooks ch00_the_lab)
	$(NBMAKE) $(FIRST)

# Every chapter again under the gpu-rehearsal profile (a hub-style model, bf16 mixed precision, 2 steps
# per run): the GPU profile's code path, checked on the CPU. Executed, never rendered.
REHEARSAL := build/rehearsal
rehearsal: venv
	$(PY) scripts/stage_book.py --rehearsal $(REHEARSAL)
	$(NBMAKE_TWO) --junitxml=$(REHEARSAL)/chapter_times.xml $$($(PY) scripts/stage_book.py --order $(REHEARSAL)/notebooks)

# Render the executed notebooks; no chapter runs again here. Sphinx warnings are errors. The site also
# carries the executed notebooks and labkit's wheel (the Colab badges and setup cells point at them);
# tests/site checks every chapter page's links against the built files.
html: venv
	$(PY) scripts/stage_book.py --publish $(SITE)
	$(RUN) $(VENV)/bin/jupyter-book build $(SITE) --warningiserror --keep-going
	$(RUN) $(PY) -m pytest tests/site --site $(SITE) -p no:cacheprovider

# A machine with a CUDA GPU and no hub (scripts/gpu_check.py): prepare here, where PyPI is reachable,
# then carry $(GPU_CHECK) there and run `make gpu-check OUT=<folder>` with the machine's own python3
# (PARTS=memory or PARTS=chapters runs one half: each takes a few minutes on an H200).
GPU_CHECK := .gpu-check
gpu-check-prepare: venv
	rm -rf $(GPU_CHECK)
	$(PY) scripts/gpu_check.py prepare $(GPU_CHECK)

gpu-check:
	python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/gpu-check-site $(GPU_CHECK)/wheels/*.whl
	PYTHONPATH=/tmp/gpu-check-site:$(CURDIR) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
	  PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py run $(GPU_CHECK) $(or $(OUT),build/gpu-check) --parts $(or $(PARTS),memory chapters)

base-model: venv
	$(RUN) OMP_NUM_THREADS=2 $(PY) -m labkit.build_base

clean:
	rm -rf build
