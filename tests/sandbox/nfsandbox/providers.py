"""Emulated cloud providers, loaded by name from the package `nfsandbox/<name>/`.

The contract a provider module fulfils (README.md, "Providers"):

    class Provider:
        def __init__(self, sandbox): ...        # nfsandbox.daemon.Sandbox
        def start(self) -> dict: ...            # endpoints/env to publish in state.json
        def stop(self) -> None: ...
        def resources(self) -> list[dict]: ...  # {"provider", "type", "id", ...} each
        def set_faults(self, faults: dict) -> None: ...
        def reset(self) -> None: ...

A provider that is missing, fails to import or fails to start makes the whole start
fail (and `sandboxctl up` with it, saying which and why): a test must never pass or
skip because an emulator silently did not run. Choose fewer providers with
NIXFORGE_SANDBOX_PROVIDERS instead.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger("nfsandbox.providers")


class Providers:
    def __init__(self, names: list[str]):
        self.names = names
        self.running: dict[str, Any] = {}
        self.status: dict[str, str] = {}
        self.endpoints: dict[str, Any] = {}

    def start(self, sandbox: Any) -> None:
        for name in self.names:
            try:
                module = importlib.import_module(f"nfsandbox.{name}")
                provider = module.Provider(sandbox)
                published = provider.start() or {}
            except Exception as exc:
                missing = isinstance(exc, ModuleNotFoundError) and exc.name == f"nfsandbox.{name}"
                self.status[name] = "no module nfsandbox/%s" % name if missing else f"start failed: {exc}"
                log.exception("provider %s: %s", name, self.status[name])
                self.stop()
                raise RuntimeError(
                    "provider %s: %s (choose the providers with NIXFORGE_SANDBOX_PROVIDERS)" % (name, self.status[name])
                ) from exc
            self.running[name] = provider
            self.endpoints.update(published)
            self.status[name] = "running"
            # Names only: published values include the emulators' tokens.
            log.info("provider %s running, publishes %s", name, sorted(published))

    def stop(self) -> None:
        for name, provider in reversed(list(self.running.items())):
            try:
                provider.stop()
            except Exception:
                log.exception("provider %s: stop failed", name)
        self.running.clear()

    def resources(self) -> list[dict]:
        out: list[dict] = []
        for name, provider in self.running.items():
            try:
                out += [{"provider": name, **r} for r in provider.resources()]
            except Exception as exc:
                log.exception("provider %s: resources failed", name)
                # a provider that cannot list must not look like one with nothing leaked
                out.append({"provider": name, "type": "error", "id": "resources-failed", "error": str(exc)})
        return out

    def get(self, name: str) -> Any:
        if name not in self.running:
            raise KeyError(f"provider {name!r} is not running ({self.status.get(name, 'unknown provider')})")
        return self.running[name]

    def reset(self) -> None:
        for name, provider in self.running.items():
            try:
                provider.reset()
            except Exception:
                log.exception("provider %s: reset failed", name)
