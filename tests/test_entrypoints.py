"""Every deployment's entrypoint loads, and every parameter of its flow is described for the UI run form.

`prefect deploy` only prints a warning and skips a prefect.yaml it cannot validate, so the file is checked here
the way the CLI reads it, schedules included.
"""

import ast
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from engine.settings import REPO_ROOT

RAW = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = RAW["deployments"]
JSON_TYPES = {"boolean": bool, "string": str, "integer": int, "number": int | float}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_loads_and_documents_its_parameters(deployment, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    schema = parameter_schema(flow.fn)
    assert flow.description, f"{deployment['entrypoint']} has no docstring"
    for name, prop in schema.properties.items():
        assert prop.get("description"), f"{deployment['entrypoint']}: parameter {name!r} has no description"
    assert set(deployment.get("parameters", {})) <= set(schema.properties)
    for name, value in deployment.get("parameters", {}).items():
        kind = schema.properties[name].get("type")
        assert kind is None or isinstance(value, JSON_TYPES[kind]), f"{deployment['name']}: {name}={value!r}"
    assert Path(REPO_ROOT, deployment["entrypoint"].split(":")[0]).is_file()


def test_prefect_yaml_is_valid_as_prefect_deploy_reads_it():
    model = PrefectYamlModel.model_validate(RAW)
    assert [d.name for d in model.deployments] == [d["name"] for d in DEPLOYMENTS]
    assert len({d["name"] for d in DEPLOYMENTS}) == len(DEPLOYMENTS)
    for deployment in DEPLOYMENTS:
        for schedule in deployment.get("schedules", []):
            assert _schedule_config_to_deployment_schedule(schedule)["schedule"].timezone == "UTC"
        assert deployment["work_pool"]["name"] == "nudge-local"


def test_every_flow_has_a_deployment():
    """A new flow without a deployment cannot be run from the UI; this names it."""
    deployed = {d["entrypoint"] for d in DEPLOYMENTS}
    for path in sorted((REPO_ROOT / "flows").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(_is_flow(d) for d in node.decorator_list):
                assert f"flows/{path.name}:{node.name}" in deployed, f"flows/{path.name}:{node.name} is not deployed"


def test_backfill_deployment_is_dry_unless_asked():
    """The UI's run form starts from the deployment's parameters: a backfill button must default to a dry run."""
    (backfill,) = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/backfill.py:backfill"]
    assert backfill["parameters"]["dry_run"] is True
    flow = load_flow_from_entrypoint(str(REPO_ROOT / backfill["entrypoint"].split(":")[0]) + ":backfill")
    assert parameter_schema(flow.fn).properties["dry_run"]["default"] is True
    assert "schedules" not in backfill


def _is_flow(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "flow"
