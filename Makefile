# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
# tcmalloc speeds up CPU diffusion training 1.5-2.4x when Debian's libtcmalloc-minimal4 is installed.
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4))
RUNENV := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC),)
PYTEST_ARGS ?=

.PHONY: test demo install clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(RUNENV) $(PY) -m pytest $(PYTEST_ARGS)

demo: $(VENV)/.installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(RUNENV) $(VENV)/bin/synthmed run configs/demo.yaml -o runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
