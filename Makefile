# cblb: the two commands a new user needs are `make demo` and `make test`.
# Both provision the machine (apt, as root), build .venv and the module the first time.
SHELL := /bin/bash
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
KERNELS ?= 6.1 6.12
export PATH := $(VENV)/bin:$(PATH)

.PHONY: all provision venv kmod test test-host test-lab demo bench bench-quick clean sparse

all: venv kmod

provision:
	@bash scripts/provision

$(VENV)/.stamp: pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.c ext/*.h)
	@$(MAKE) -s provision
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check virtme-ng Cython 'setuptools>=68' wheel
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-build-isolation -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

kmod:
	@$(MAKE) -s provision
	@for k in $(KERNELS); do bash scripts/build-kmod "$$k" || exit 1; done

sparse: provision
	@for k in $(KERNELS); do bash scripts/build-kmod "$$k" C=2 || exit 1; done

test: venv kmod
	@bash scripts/test-all $(KERNELS)

test-host: venv
	$(PY) -m pytest -q tests/host

demo: venv kmod
	@bash scripts/demo

bench-quick: venv kmod
	@bash scripts/lab --kver 6.12 --timeout 1500 -- python3 -m cblb.cli bench --quick --no-report --out lab-out/bench-quick
	@.venv/bin/python -m cblb.cli bench --report-only lab-out/bench-quick

bench: venv kmod
	@bash scripts/lab --kver 6.12 --timeout 14400 -- python3 -m cblb.cli bench --no-report --out lab-out/bench
	@.venv/bin/python -m cblb.cli bench --report-only lab-out/bench

clean:
	rm -rf kmod/build lab-out build *.egg-info
	$(MAKE) -C kmod clean
