"""Every deployment's entrypoint loads, and every parameter of its flow is described for the UI run form."""

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from engine.settings import REPO_ROOT

DEPLOYMENTS = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_loads_and_documents_its_parameters(deployment, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    schema = parameter_schema(flow.fn)
    assert flow.description, f"{deployment['entrypoint']} has no docstring"
    for name, prop in schema.properties.items():
        assert prop.get("description"), f"{deployment['entrypoint']}: parameter {name!r} has no description"
    assert set(deployment.get("parameters", {})) <= set(schema.properties)
    assert Path(REPO_ROOT, deployment["entrypoint"].split(":")[0]).is_file()
