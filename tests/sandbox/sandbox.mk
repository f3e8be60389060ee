# Sandbox targets, included by the root Makefile. The instance is chosen with
# NIXFORGE_SANDBOX_INSTANCE (default 0); see tests/sandbox/README.md.
SANDBOXCTL := $(CURDIR)/tests/sandbox/sandboxctl

.PHONY: sandbox-up sandbox-down sandbox-status

sandbox-up: venv
	$(SANDBOXCTL) up

sandbox-down:
	$(SANDBOXCTL) down

sandbox-status:
	$(SANDBOXCTL) status
