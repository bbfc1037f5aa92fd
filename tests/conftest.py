"""The shared smoke run: the whole DAG on tests/configs/smoke.yaml, run once per session.

It starts in the background as soon as collection has found a test that reads it, and the
modules with such tests run last (each module's tests kept together and in order), so the
run builds while the other tests go on instead of before them.
"""
import pytest

from workflow_runner import Started, Workflow, make_workflow

SMOKE = "smoke_run"
_background: dict[str, tuple[Workflow, Started]] = {}


def _reads_smoke(item) -> bool:
    return SMOKE in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session, config, items):
    late = {item.module.__name__ for item in items if _reads_smoke(item)}
    items.sort(key=lambda item: item.module.__name__ in late)  # stable: order kept otherwise


def pytest_collection_finish(session):
    if any(_reads_smoke(item) for item in session.items) and not session.config.option.collectonly:
        workflow = make_workflow(session.config._tmp_path_factory.mktemp("smoke"))
        _background[SMOKE] = (workflow, workflow.start("--cores", "2"))


def pytest_sessionfinish(session):
    for _, started in _background.values():
        if started.proc.poll() is None:  # interrupted before any test waited for it
            started.proc.terminate()
            started.proc.wait()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Workflow:
    """The whole DAG on tests/configs/smoke.yaml, run once for every test that reads it."""
    if SMOKE not in _background:  # e.g. requested dynamically
        workflow = make_workflow(tmp_path_factory.mktemp("smoke"))
        _background[SMOKE] = (workflow, workflow.start("--cores", "2"))
    workflow, started = _background[SMOKE]
    started.wait()
    return workflow
