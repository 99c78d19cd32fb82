# Set-up and everyday commands. `make demo` and `make test` create .venv on first use.
#
# TORCH_SPEC pins the torch build installed before the project. torch==2.13.0
# is a CPU wheel on the project machines' local disk (no download); on an
# ordinary machine pip fetches the same release from PyPI. Override it, e.g.
#   make demo TORCH_SPEC="torch==2.5.1"
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
DEMO_RUN ?= runs/demo
DEMO_EPOCHS ?= 15

.PHONY: install demo test clean

$(BIN)/contrastkit: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/contrastkit

demo: install
	rm -rf $(DEMO_RUN)
	$(BIN)/contrastkit train --out $(DEMO_RUN) --epochs $(DEMO_EPOCHS)
	$(BIN)/contrastkit evaluate $(DEMO_RUN)
	$(BIN)/contrastkit report $(DEMO_RUN)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
