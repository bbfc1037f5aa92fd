import pytest

from workflow_runner import Workflow, make_workflow


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Workflow:
    """The whole DAG on tests/configs/smoke.yaml, run once for every test that reads it."""
    workflow = make_workflow(tmp_path_factory.mktemp("smoke"))
    workflow.run("--cores", "2")
    return workflow
