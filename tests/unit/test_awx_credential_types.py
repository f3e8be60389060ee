"""AWX credential types (awx/credential_types/*.yml): well-formed, and their injectors set
exactly environment variables the collection reads (and the primary ones it reads are set)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TYPES = REPO / "awx" / "credential_types"
PLUGIN_SOURCES = sorted((REPO / "plugins").rglob("*.py"))


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((TYPES / name).read_text())


def plugin_text() -> str:
    return "\n".join(p.read_text() for p in PLUGIN_SOURCES)


ALL = sorted(p.name for p in TYPES.glob("*.yml"))


def test_the_three_types_exist() -> None:
    assert ALL == ["backblaze_b2.yml", "digitalocean.yml", "equinix_metal.yml"]


@pytest.mark.parametrize("name", ALL)
def test_shape(name: str) -> None:
    doc = load(name)
    assert doc["kind"] == "cloud" and doc["name"].startswith("nixforge.images ")
    fields = {f["id"]: f for f in doc["inputs"]["fields"]}
    assert set(doc["inputs"]["required"]) <= set(fields)
    for env, template in doc["injectors"]["env"].items():
        used = re.findall(r"\{\{\s*(\w+)\s*\}\}", template)
        assert used and set(used) <= set(fields), (env, template)
    # tokens and keys are secret in AWX (never shown back)
    for field in fields.values():
        if re.search(r"token|key", field["id"]):
            assert field.get("secret") is True, field["id"]


@pytest.mark.parametrize("name", ALL)
def test_every_injected_variable_is_read_by_the_collection(name: str) -> None:
    text = plugin_text()
    if name == "backblaze_b2.yml" and not (REPO / "plugins" / "modules" / "b2_object.py").exists():
        pytest.skip("the b2_object module is not in this tree yet")
    for env in load(name)["injectors"]["env"]:
        assert re.search(r"""['"\s]%s['"\s,)]""" % re.escape(env), text), "%s is read by no plugin" % env


def primary_env(spec: dict[str, Any]) -> set[str]:
    """The first environment variable of each option's env fallback."""
    names = set()
    for option in spec.values():
        fallback = option.get("fallback")
        if fallback and fallback[1]:
            names.add(fallback[1][0])
    return names


def test_metal_primary_variables_are_injected() -> None:
    from ansible_collections.nixforge.images.plugins.module_utils._metal._client import metal_argument_spec

    assert primary_env(metal_argument_spec()) <= set(load("equinix_metal.yml")["injectors"]["env"])


def test_digitalocean_primary_variables_are_injected() -> None:
    from ansible_collections.nixforge.images.plugins.module_utils._digitalocean import _client as digitalocean

    wanted = {digitalocean.TOKEN_ENV[0], digitalocean.API_URL_ENV[0]}
    assert wanted <= set(load("digitalocean.yml")["injectors"]["env"])
