# cblb: the two commands a new user needs are `make demo` and `make test`.
# Both provision the machine (apt, as root), build .venv and the module the first time.
SHELL := /bin/bash
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
# Lab kernels (scripts/kver names): Debian's 5.10 LTS, 6.1 LTS, 6.12 LTS and the newest (7,
# from sid). 5.10 and 7 build in chroots of their own suites that scripts/provision makes.
# make test: the full lab suite on 6.12, the compact one on the others (scripts/test-all).
KERNELS ?= 5.10 6.1 6.12 7
export PATH := $(VENV)/bin:$(PATH)

.PHONY: all provision venv kmod test test-kernels test-host test-lab demo bench bench-quick clean sparse

all: venv kmod

provision:
	@bash scripts/provision $(KERNELS)

$(VENV)/.stamp: pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.c ext/*.h)
	@$(MAKE) -s provision KERNELS="$(KERNELS)"
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check virtme-ng Cython 'setuptools>=68' wheel
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-build-isolation -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

kmod:
	@$(MAKE) -s provision KERNELS="$(KERNELS)"
	@for k in $(KERNELS); do bash scripts/build-kmod "$$k" || exit 1; done

sparse: provision
	@for k in $(KERNELS); do bash scripts/build-kmod "$$k" C=2 || exit 1; done

test: venv kmod
	@bash scripts/test-all $(KERNELS)

# The full lab suite on every kernel listed, e.g. make test-kernels KERNELS="5.10 7".
test-kernels: venv kmod
	@CBLB_FULL_KERNEL=all bash scripts/test-all $(KERNELS)

test-host: venv
	$(PY) -m pytest -q tests/host

# make demo runs in the 6.12 lab guest (scripts/demo): only that kernel is provisioned.
demo: KERNELS := 6.12
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
