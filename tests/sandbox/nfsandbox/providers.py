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


class EmulatorProvider:
    """What the HTTP emulators (B2, Metal, DigitalOcean) share: an `api` object holding
    the state and a `http` front. A subclass sets `name` and `title` and writes `start`;
    `_cleanup` runs after both are stopped."""

    name = ""
    title = ""  # in messages: "the <title> emulator is not running"

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self.api: Any = None
        self.http: Any = None

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        shutdown = getattr(self.api, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self._cleanup()

    def _cleanup(self) -> None:
        """Nothing by default; a provider with files of its own removes them here."""

    def resources(self) -> list[dict[str, Any]]:
        return self.api.resources() if self.api is not None else []

    def set_faults(self, faults: dict[str, Any]) -> None:
        if self.api is None:
            raise RuntimeError(f"the {self.title} emulator is not running")
        self.api.faults.set(faults)
        log.info("%s faults set: %s", self.title, faults)

    def get_faults(self) -> dict[str, Any]:
        return self.api.faults.snapshot() if self.api is not None else {}

    def reset(self) -> None:
        if self.api is not None:
            self.api.reset()


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
