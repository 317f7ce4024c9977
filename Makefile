# obsconform: `make demo` and `make test` each set the host and the venv up first
# (idempotently: a second run installs nothing).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup host venv demo test test-fast bench catalogue-table matrix-table clean

setup: host venv

host:
	@scripts/setup-host.sh $(HOST_GROUPS)

venv: $(STAMP)

# bcc is importable only from Debian's python3: the venv is built from it with
# --system-site-packages. Reinstalled only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PY) -c 'import bcc' 2>/dev/null || { rm -rf $(VENV) && /usr/bin/python3 -m venv --system-site-packages $(VENV); }
	@echo "setup: installing Python dependencies into $(VENV)" >&2
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[examples,test,bench]' > $(VENV)/pip.log 2>&1 \
		|| { cat $(VENV)/pip.log >&2; echo "setup: pip install failed (log above)" >&2; exit 1; }
	@touch $@

demo: HOST_GROUPS = lint
# The demo's verdict is shown, not enforced: only a harness error (exit 1) fails `make demo`.
demo: setup
	@$(VENV)/bin/obsconform demo; rc=$$?; [ $$rc -ne 1 ] || exit 1

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: HOST_GROUPS = lint report realworld
# Kernel tests never skip here: a skipped one fails (tests/conftest.py).
test: setup
	@OBSCONFORM_REQUIRE_KERNEL=1 $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no test" >&2; exit 1; fi; exit $$rc

test-fast: setup
	@$(PY) -m pytest -m 'not kernel' $(PYTEST_ARGS); rc=$$?; [ $$rc -ne 5 ] || exit 1; exit $$rc

bench: HOST_GROUPS = bench
bench: setup
	@$(PY) -m tests.bench --out reports/bench.json

catalogue-table: venv
	@$(PY) -c 'import sys; from conformance.catalogue import main; sys.exit(main(sys.argv[1:]))' --markdown-into README.md

# The README's "Tested stacks" table, from tests/realworld/matrix.py's records.
matrix-table: venv
	@$(PY) -m tests.realworld.matrix --markdown-into README.md

clean:
	rm -rf $(VENV) reports/runs .pytest_cache
