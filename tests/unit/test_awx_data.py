"""AWX as code (awx/*.yml, applied by playbooks/awx_configure.yml through awx.awx): the
data has the shape awx.awx's modules and AWX's survey validation accept (awx.awx cannot
be installed here: no Galaxy), and it fits the collection: every survey variable is a
role argument or a documented playbook variable, every playbook exists, the workflow runs
the teardown stage on every failure edge.

The shapes are the ones AWX documents for a survey spec (question_name, variable, type
among text/textarea/password/integer/float/multiplechoice/multiselect, required, choices
for the choice types) and awx.awx.workflow_job_template's workflow_nodes (identifier,
unified_job_template {name, type}, related {success,failure,always}_nodes [{identifier}]).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AWX = REPO / "awx"
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
CREDENTIAL_KEYS = {"aws", "digitalocean", "b2", "metal"}
EDGES = ("success_nodes", "failure_nodes", "always_nodes")
# each pipeline's stage playbooks (playbooks/<pipeline>_stage_<stage>.yml), in their order
STAGES = {"do": ("provision", "build", "teardown", "publish"), "sd": ("provision", "build", "teardown")}


def load(name: str) -> Any:
    return yaml.safe_load((AWX / name).read_text())


def role_arguments() -> set[str]:
    names: set[str] = set()
    for spec in REPO.glob("roles/*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            names |= set(entry.get("options", {}))
    return names


def header(playbook: Path) -> str:
    """The comment block a playbook starts with (where its variables are documented)."""
    lines = []
    for line in playbook.read_text().splitlines():
        if line.startswith("#") or line in ("---", ""):
            lines.append(line)
        else:
            break
    return "\n".join(lines)


SURVEYS = load("surveys.yml")
TEMPLATES = load("job_templates.yml")
WORKFLOWS = load("workflows.yml")["workflows"]
SURVEY_LISTS = [k for k, v in SURVEYS.items() if isinstance(v, list)]


@pytest.mark.parametrize("survey", SURVEY_LISTS)
def test_survey_questions_have_awx_shape(survey: str) -> None:
    seen = set()
    for question in SURVEYS[survey]:
        assert {"question_name", "variable", "type", "required"} <= set(question), question
        assert question["type"] in SURVEY_TYPES, question
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", question["variable"]), question
        assert question["variable"] not in seen, f"{question['variable']} asked twice in {survey}"
        seen.add(question["variable"])
        if question["type"] in ("multiplechoice", "multiselect"):
            assert question["choices"] and question.get("default", question["choices"][0]) in question["choices"]
        if question["type"] == "integer" and "default" in question:
            assert question.get("min", question["default"]) <= question["default"] <= question.get("max", 10**9)


def test_every_survey_variable_is_a_role_argument_or_a_documented_playbook_variable() -> None:
    arguments = role_arguments()
    documented = header(REPO / "playbooks" / "build_do_image.yml") + header(REPO / "playbooks" / "reap.yml")
    for survey in SURVEY_LISTS:
        for question in SURVEYS[survey]:
            name = question["variable"]
            assert name in arguments or (name.startswith("nixforge_") and name in documented), (survey, name)


def test_job_templates() -> None:
    names = [t["name"] for t in TEMPLATES["job_templates"]]
    assert len(names) == len(set(names))
    playbooks = {t["playbook"] for t in TEMPLATES["job_templates"]}
    stages = {f"playbooks/{p}_stage_{s}.yml" for p, names in STAGES.items() for s in names}
    wholes = {"playbooks/build_do_image.yml", "playbooks/build_sd_aarch64.yml", "playbooks/reap.yml"}
    assert playbooks == stages | wholes
    for template in TEMPLATES["job_templates"]:
        assert (REPO / template["playbook"]).is_file(), template
        assert template["survey"] in SURVEY_LISTS, template
        assert set(template["credentials"]) <= CREDENTIAL_KEYS, template
        stage = "_stage_" in template["playbook"]
        required = {q["variable"] for q in SURVEYS[template["survey"]] if q["required"]}
        # stages find each other by the build id: no stage may run without one
        assert ("nixforge_build_id" in required) == stage, template
    defaults = TEMPLATES["defaults"]
    assert {"project", "inventory", "execution_environment", "extra_vars"} <= set(defaults)
    # jobs run in fresh containers: the state the stages share must be on a shared path
    state_root = "/var/lib/nixforge/state"
    assert defaults["extra_vars"]["builder_host_state_dir"].startswith(state_root + "/")
    source = yaml.safe_load((REPO / "inventories" / "awx" / "nixforge.builders.yml").read_text())
    assert source["plugin"] == "nixforge.images.builders" and source["state_dirs"] == [state_root]


def test_stage_templates_get_the_credentials_their_playbooks_need() -> None:
    by_playbook = {t["playbook"]: set(t["credentials"]) for t in TEMPLATES["job_templates"]}
    assert {"digitalocean", "b2"} <= by_playbook["playbooks/do_stage_publish.yml"]
    assert {"aws", "metal"} <= by_playbook["playbooks/do_stage_teardown.yml"]
    # the provision stage checks DigitalOcean and B2 before it creates anything
    assert {"aws", "metal", "digitalocean", "b2"} <= by_playbook["playbooks/do_stage_provision.yml"]
    # every SD stage may meet the builder of either provider
    for stage in STAGES["sd"]:
        assert {"aws", "metal"} <= by_playbook[f"playbooks/sd_stage_{stage}.yml"]


def test_inventory_source() -> None:
    for inventory in load("inventories.yml")["inventories"]:
        assert inventory["name"] == TEMPLATES["defaults"]["inventory"]
        for source in inventory["sources"]:
            assert source["source"] == "scm" and (REPO / source["source_path"]).is_file()
            assert source["source_path"].endswith("builders.yml")  # the plugin's file name rule
            # the next stage must see the builder the last one made
            assert source["update_on_launch"] is True and source["update_cache_timeout"] == 0


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w["name"])
def test_workflow_nodes(workflow: dict[str, Any]) -> None:
    templates = {t["name"]: t for t in TEMPLATES["job_templates"]}
    nodes = {n["identifier"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"])
    assert workflow["survey"] in SURVEY_LISTS
    teardowns = set()
    for node in workflow["nodes"]:
        assert set(node) <= {"identifier", "unified_job_template", "related"}, node
        ujt = node["unified_job_template"]
        assert ujt["type"] == "job_template" and ujt["name"] in templates, node
        if templates[ujt["name"]]["playbook"].endswith("_stage_teardown.yml"):
            teardowns.add(node["identifier"])
        for edge, targets in node.get("related", {}).items():
            assert edge in EDGES
            assert all(t["identifier"] in nodes for t in targets), node
    # every node other than a teardown or the last one tears down when it fails
    for node in workflow["nodes"]:
        related = node.get("related", {})
        if node["identifier"] in teardowns and not related.get("success_nodes"):
            continue
        if not related:
            assert templates[node["unified_job_template"]["name"]]["playbook"].endswith("do_stage_publish.yml")
            continue
        failure = {t["identifier"] for t in related.get("failure_nodes", [])}
        assert failure and failure <= teardowns, node
    # the order of the stages: provision, build, teardown (and publish)
    pipeline = Path(templates[nodes["provision"]["unified_job_template"]["name"]]["playbook"]).stem.split("_")[0]
    order, current = [], "provision"
    while current:
        order.append(templates[nodes[current]["unified_job_template"]["name"]]["playbook"])
        success = nodes[current].get("related", {}).get("success_nodes", [])
        current = success[0]["identifier"] if success else ""
    assert [Path(p).stem for p in order] == [f"{pipeline}_stage_{s}" for s in STAGES[pipeline]]


def test_each_pipeline_has_a_stage_workflow() -> None:
    templates = {t["name"]: t["playbook"] for t in TEMPLATES["job_templates"]}
    firsts = {templates[w["nodes"][0]["unified_job_template"]["name"]] for w in WORKFLOWS}
    assert firsts == {f"playbooks/{p}_stage_provision.yml" for p in STAGES}


def test_configure_playbook_applies_every_data_file() -> None:
    text = (REPO / "playbooks" / "awx_configure.yml").read_text()
    for module in ("credential_type", "execution_environment", "project", "inventory", "inventory_source"):
        assert f"awx.awx.{module}:" in text
    for module in ("job_template", "workflow_job_template"):
        assert f"awx.awx.{module}:" in text
    for name in ("surveys.yml", "job_templates.yml", "inventories.yml", "workflows.yml", "credential_types/"):
        assert name in text


def test_execution_environment_definition() -> None:
    ee = load("execution-environment.yml")
    assert ee["version"] == 3
    requirements = yaml.safe_load((AWX / ee["dependencies"]["galaxy"]).read_text())
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    tarball = f"nixforge-images-{version}.tar.gz"
    assert requirements["collections"] == [{"name": f"collections/{tarball}", "type": "file"}]
    assert ee["additional_build_files"] == [{"src": tarball, "dest": "collections"}]
    meta = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text())
    assert (REPO / meta["dependencies"]["python"]).is_file() and (REPO / meta["dependencies"]["system"]).is_file()
