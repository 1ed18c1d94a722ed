# Two commands do all set-up: `make demo` and `make test`. Both create and reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch by default. With a GPU, install your own torch into .venv first (see README);
# the set-up keeps any torch already there.
TORCH_SPEC ?= torch==2.13.0
OUT ?= out/proxy

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[studies,test]"
	touch $@

demo: setup
	$(VENV)/bin/stablelab proxy --out $(OUT)
	@echo "Report: $(OUT)/report.html"

test: setup
	$(PY) -m pytest
	$(PY) -m pytest -m slow -k smoke

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) out build src/*.egg-info
