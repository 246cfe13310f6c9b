# `make demo` and `make test` install what they need into .venv first (fast when it is already there).
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo
# the demo is bounded by updates, not time, so its result does not depend on the machine's speed
DEMO_UPDATES ?= 1000

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# (DEMO quoted: a folder with a space in its name is one argument)
demo: $(STAMP)
	$(BIN)/nmt corpus get bible-de-en "$(DEMO)/raw" --force
	$(BIN)/nmt preprocess "$(DEMO)/raw" "$(DEMO)/bin" --vocab-size 8000 --force
	$(BIN)/nmt-train "$(DEMO)/bin" "$(DEMO)/run" --force --preset tiny --devices cpu \
		--max-updates $(DEMO_UPDATES) --valid-every 200 --valid-max-sentences 400 --lr 7e-4 --warmup 250
	$(BIN)/nmt translate "$(DEMO)/run" --device cpu --beam 5 < "$(DEMO)/bin/test.de" > "$(DEMO)/test.hyp.en"
	$(BIN)/nmt score "$(DEMO)/test.hyp.en" "$(DEMO)/bin/test.en"

# in two processes (pytest-xdist): in one, the second core idled through most of the suite (665 s, against 445 s and
# 494 s in two, on 2 cores on 2026-12-08). The tests that look for processes or files left behind look among their
# own (their process ids and groups, their tmp_path), so a test beside them does not count.
test: $(STAMP)
	$(BIN)/pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

clean:
	rm -rf "$(DEMO)" .pytest_cache
