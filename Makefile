# nixforge.images — the two commands a new user runs are `make demo` and `make test`.
# Everything they need is installed by the targets themselves (apt, a virtualenv with
# pinned packages); nothing is written to the user's home directory.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

REPO   := $(CURDIR)
PYTHON ?= python3
VENV   := $(REPO)/.venv
BIN    := $(VENV)/bin
BUILD  := $(REPO)/.build
# Ansible finds the collection here (a symlink to the repository root) ...
COLLECTIONS := $(BUILD)/collections
# ... and ansible-test, which needs a real ansible_collections/ path, works on a copy.
SANITY_ROOT := $(BUILD)/sanity/ansible_collections/nixforge/images

export ANSIBLE_HOME := $(BUILD)/ansible-home
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_LOCAL_TEMP := $(BUILD)/ansible-home/tmp
# SSH control sockets: a short path (Unix sockets allow 108 bytes), whatever the checkout's.
export ANSIBLE_SSH_CONTROL_PATH_DIR := /tmp/nixforge-cp-$(shell printf %s '$(REPO)' | sha1sum | cut -c1-12)
export ANSIBLE_CONFIG := $(REPO)/ansible.cfg
# ansible-lint, ansible-compat and pip keep caches here instead of ~/.cache
export XDG_CACHE_HOME := $(BUILD)/cache
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=
PYTEST_PATHS ?= tests/unit tests/integration
# Integration tests run side by side on several sandbox instances (one per xdist worker:
# NIXFORGE_SANDBOX_INSTANCE + 0..N-1); a module stays on one worker unless marked `spread`.
PYTEST_WORKERS ?= 4
# --no-loadscope-reorder: the order is tests/integration/conftest.py's (long work first)
XDIST := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder
SANITY_TIMEOUT ?= 900

.PHONY: help deps venv collection test lint ruff ansible-lint sanity changelog-lint docs-lint \
        pytest unit integration demo benchmark constraints clean test-matrix test-matrix-reduced

help:
	@echo "make demo    build an AArch64 SD image, then a DigitalOcean image, end to end in the local sandbox cloud"
	@echo "make test    everything: lint, sanity, unit and integration tests"
	@echo "make sandbox-up / sandbox-down / sandbox-status   drive the local sandbox cloud"
	@echo "make lint | sanity | unit | integration | benchmark   the parts of make test"

deps:
	@$(REPO)/scripts/install-system-deps.sh

$(VENV)/.stamp: tests/requirements.txt tests/constraints.txt requirements.txt
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	cd tests && $(BIN)/pip install -q -c constraints.txt -r requirements.txt
	touch $@

venv: $(VENV)/.stamp

collection: venv
	@mkdir -p $(COLLECTIONS)/ansible_collections/nixforge $(ANSIBLE_LOCAL_TEMP) $(ANSIBLE_SSH_CONTROL_PATH_DIR)
	@ln -sfn $(REPO) $(COLLECTIONS)/ansible_collections/nixforge/images
	@# the real awx.awx (from the community ansible package, pinned there) for ansible-lint and the AWX tests
	@$(VENV)/bin/python tests/matrix/awx_collection.py $(COLLECTIONS)

# Lint, sanity and the reduced matrix run as tests (tests/checks) in the same pytest run, side
# by side with the others: one summary line at the end, and no core idle while sandbox tests wait.
test: collection
	@$(MAKE) --no-print-directory pytest PYTEST_PATHS="tests/checks tests/unit tests/integration"

lint: ruff ansible-lint changelog-lint docs-lint

ruff: venv
	@echo "== ruff"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ansible-lint: collection
	@echo "== ansible-lint (production profile)"
	$(BIN)/ansible-lint --offline

changelog-lint: venv
	@echo "== antsibull-changelog lint"
	$(BIN)/antsibull-changelog lint

docs-lint: collection
	@echo "== ansible-doc renders every plugin"
	$(BIN)/python scripts/check-docs.py

sanity: collection
	@echo "== ansible-test sanity"
	@rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_ROOT)
	@# what the collection ships (galaxy.yml build_ignore): not the sandbox, benchmarks or scripts, which ruff checks
	@git ls-files -z --cached --others --exclude-standard | $(BIN)/python scripts/shipped-files.py \
	  | rsync -a --from0 --files-from=- ./ $(SANITY_ROOT)/
	@# ansible-test lists a collection's files through git; the copy gets its own throwaway index.
	@cd $(SANITY_ROOT) && git init -q && git add -A
	@pip_version=$$($(BIN)/python -c 'import ansible_test._internal.python_requirements as r, inspect, re; print(re.search(r"pip=.(\d+\.\d+)", inspect.getsource(r)).group(1))'); \
	  mkdir -p $(BUILD)/home/.ansible/test/cache && \
	  cp scripts/ansible-test-get-pip.py $(BUILD)/home/.ansible/test/cache/get_pip_$${pip_version//./_}.py
	@# A checker stuck in a loop must fail here with a message, not eat CI's whole budget (takes ~1 min).
	cd $(SANITY_ROOT) && HOME=$(BUILD)/home timeout $(SANITY_TIMEOUT) $(BIN)/ansible-test sanity --color=no \
	  --python $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
	  --local || { rc=$$?; [ $$rc != 124 ] || echo "ansible-test sanity did not finish in $(SANITY_TIMEOUT) s: run it with -v to see which test hangs"; exit $$rc; }

# One pytest run so that its summary line is the last line of `make test`.
pytest: collection
	@echo "== pytest (unit + integration)"
	NIXFORGE_REQUIRE_SANDBOX=1 $(BIN)/pytest $(PYTEST_PATHS) $(XDIST) --durations=15 $(PYTEST_ARGS)

unit: collection
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: collection
	NIXFORGE_REQUIRE_SANDBOX=1 $(BIN)/pytest tests/integration $(XDIST) --durations=15 $(PYTEST_ARGS)

demo: collection
	@$(REPO)/scripts/demo.sh

benchmark: collection
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.pipeline --playbook sd
	$(BIN)/python -m benchmarks.pipeline --playbook do
	$(BIN)/python -m benchmarks.b2_upload
	$(BIN)/python -m benchmarks.b2_upload --upload-rate 100
	$(BIN)/python -m benchmarks.publish --size-mib 1024

constraints: venv
	$(BIN)/pip freeze --exclude-editable | sed '1i # Exact versions the project is tested with (pip -c). Regenerate with: make constraints' > tests/constraints.txt
	@# ansible-core 2.20 / 2.21 on the Python 3.13 root (tests/matrix/pyroot.py): resolved anew, then frozen
	$(VENV)/bin/python tests/matrix/pyroot.py constraints 2.20
	$(VENV)/bin/python tests/matrix/pyroot.py constraints 2.21

# ansible-core 2.19 (.venv, Python 3.11), 2.20 and 2.21 (a Debian 13 root with Python 3.13, built
# once with debootstrap and cached): sanity, unit tests, real awx.awx, the installed collection's
# SD pipeline in the sandbox; one summary line per version. See docs/development.md.
MATRIX_VERSIONS ?= 2.19 2.20 2.21
MATRIX_STEPS ?= sanity,unit,e2e
test-matrix: collection
	$(VENV)/bin/python tests/matrix/run.py --steps $(MATRIX_STEPS) $(MATRIX_VERSIONS)

# The part of the matrix inside `make test` (2.19's sanity and unit tests run there anyway): the
# newest ansible-core drives real awx.awx, ansible-builder and the installed collection's pipeline.
test-matrix-reduced: collection
	$(VENV)/bin/python tests/matrix/run.py --steps e2e 2.21

clean:
	rm -rf $(BUILD) tests/output

-include tests/sandbox/sandbox.mk
