"""builder_host's default state directory: where reap.yml and the builders inventory look."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = yaml.safe_load((ROOT / "roles" / "builder_host" / "defaults" / "main.yml").read_text())
REAP = yaml.safe_load((ROOT / "playbooks" / "reap.yml").read_text())


def render(template: str, **variables: str) -> str:
    return str(Templar(loader=DataLoader(), variables=variables).template(trust_as_template(template)))


@pytest.mark.parametrize(
    ("playbook_dir", "expected"),
    [
        # the collection's pipeline plays are imported from playbooks/parts/
        ("/srv/nixforge/playbooks/parts", "/srv/nixforge/playbooks/.nixforge/sd-1"),
        ("/srv/nixforge/playbooks", "/srv/nixforge/playbooks/.nixforge/sd-1"),
        ("/home/me/my-playbooks", "/home/me/my-playbooks/.nixforge/sd-1"),
    ],
)
def test_state_dir_default(playbook_dir: str, expected: str) -> None:
    got = render(DEFAULTS["builder_host_state_dir"], playbook_dir=playbook_dir, builder_host_build_id="sd-1")
    assert got == expected


def test_reap_looks_where_the_pipelines_write() -> None:
    playbooks = str(ROOT / "playbooks")
    (play,) = [p for p in REAP if "nixforge_reap_state_root" in (p.get("vars") or {})]
    reap_root = render(play["vars"]["nixforge_reap_state_root"], playbook_dir=playbooks)
    written = render(
        DEFAULTS["builder_host_state_dir"], playbook_dir=playbooks + "/parts", builder_host_build_id="sd-1"
    )
    assert written == reap_root + "/sd-1"
