# moonflask: `make run` starts the server (and the simulated printer when no
# real Klippy socket is configured); `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KLIPPY_VENV := .klippy-venv
DATA ?= $(CURDIR)/printer_data
PORT ?= 7125
SHARED ?= $(CURDIR)/../shared

.PHONY: run test venv klippy reference bench clean

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

klippy:
	bash scripts/install_klippy.sh $(KLIPPY_VENV)

reference:
	bash scripts/install_reference.sh .reference-venv

run: venv klippy
	MOONFLASK_SHARED=$(SHARED) DATA=$(DATA) PORT=$(PORT) PY=$(PY) bash scripts/run.sh

# tests/test_spoolman.py runs the real Spoolman via $(SHARED)/spoolman/start.sh, which
# creates its venv in .spoolman-venv on first use (pip install, about 15 s).
test: venv klippy reference
	MOONFLASK_SHARED=$(SHARED) $(PY) -m pytest -q tests $(PYTEST_ARGS)

bench: venv klippy reference
	command -v wrk >/dev/null || apt-get install -y -q wrk
	MOONFLASK_SHARED=$(SHARED) $(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(KLIPPY_VENV) .reference-venv .spoolman-venv printer_data
