"""GPU memory reaches the tables, the study tables and plots and the report, labelled as GPU
memory, from metrics files as a CUDA run records them (no GPU here): train_metrics.json with
the allocator's peaks, processes and devices, and evaluation's metrics.json with its own."""
from __future__ import annotations

import pandas as pd
import pytest
from report_fixtures import REPO, build_results, run_pipeline

from workflow_scripts.common.io_utils import read_json, write_json
from workflow_scripts.report.memory_columns import with_memory
from workflow_scripts.report.sections import parameter_table

# as recorded by a CUDA run: per experiment (allocated, reserved) MiB
GPU_PEAKS = {"rank-study-r4": (801.5, 1024.0), "rank-study-r8": (812.5, 1044.0),
             "rank-study-r16": (834.5, 1064.0), "rank-study-r32": (878.5, 1108.0),
             "method-study-lora": (903.0, 1200.0), "method-study-qlora": (402.0, 600.0)}


def record_cuda_run(results, name: str, allocated: float, reserved: float) -> None:
    train_file = results / "adapters" / name / "train_metrics.json"
    train = read_json(train_file) | {"device": "cuda", "peak_cuda_allocated_mb": allocated,
                                      "peak_cuda_reserved_mb": reserved, "processes": 2,
                                      "devices": 2}
    write_json(train_file, train)
    eval_file = results / "eval" / name / "metrics.json"
    write_json(eval_file, read_json(eval_file) | {"eval_peak_memory_mb": 2100.0,
                                                  "eval_peak_cuda_allocated_mb": allocated / 2,
                                                  "eval_peak_cuda_reserved_mb": reserved / 2})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_report")
    build_results(root)
    names = {p.name for p in (root / "results" / "adapters").iterdir()}
    assert set(GPU_PEAKS) <= names, sorted(names)
    for name, (allocated, reserved) in GPU_PEAKS.items():
        record_cuda_run(root / "results", name, allocated, reserved)
    results = run_pipeline(root, resamples=50)
    return results, (results / "report" / "training_report.md").read_text(encoding="utf-8")


def test_experiments_table_has_gpu_peaks_processes_and_devices(built):
    results, _ = built
    table = pd.read_csv(results / "metrics" / "experiments.tsv", sep="\t").set_index("experiment")
    for name, (allocated, reserved) in GPU_PEAKS.items():
        row = table.loc[name]
        assert (row["peak_cuda_allocated_mb"], row["peak_cuda_reserved_mb"]) == (allocated, reserved)
        assert (row["eval_peak_cuda_reserved_mb"], row["processes"], row["devices"]) == (reserved / 2, 2, 2)
        assert row["peak_memory_mb"] > 0  # host RSS stays
    assert table.loc["lccc-r8", ["peak_cuda_reserved_mb"]].isna().all()  # a CPU run has none


def study_table(md: str, title: str) -> list[str]:
    section = md.split(title, 1)[1]
    return [line for line in section.splitlines()[1:] if line.startswith("|")][:8]


def test_rank_and_method_studies_show_gpu_memory_labelled_as_such(built):
    _, md = built
    rank = study_table(md, "rank-study (varies")
    header = [c.strip() for c in rank[0].strip("|").split("|")]
    assert header.index("GPU reserved (MB)") < header.index("host RSS (MB)")
    assert "GPU allocated (MB)" in header and "memory (MB)" not in header
    r16 = next(line for line in rank if "rank-study-r16" in line)
    assert "1064" in r16 and "834.5" in r16
    method = study_table(md, "method-study (varies")
    assert "GPU reserved (MB)" in method[0]
    qlora = next(line for line in method if "method-study-qlora" in line)
    assert "600" in qlora


def test_plots_exist_with_gpu_panels(built):
    results, _ = built
    for plot in ("rank_cost.png", "method_cost.png"):
        assert (results / "report" / "plots" / plot).stat().st_size > 10_000


def test_cpu_only_tables_show_host_rss_only():
    frame = pd.DataFrame({"experiment": ["a"], "peak_memory_mb": [300.0],
                          "peak_cuda_reserved_mb": [None], "steps": [5]})
    assert with_memory({"steps": "steps", "peak_memory_mb": "memory"}, frame) == {
        "steps": "steps", "peak_memory_mb": "host RSS (MB)"}
    header = parameter_table(frame).columns
    assert "host RSS (MB)" in header and not any("GPU" in h for h in header)


def test_the_studio_lists_gpu_memory_beside_host_rss(tmp_path):
    import shutil

    from workflow_scripts.studio.catalog import Catalog

    shutil.copy(REPO / "tests" / "configs" / "smoke.yaml", tmp_path / "config.yaml")
    name = next(iter(Catalog(tmp_path / "config.yaml", tmp_path).rows()))["experiment"]
    adapter = tmp_path / "results" / "adapters" / name
    adapter.mkdir(parents=True)
    write_json(adapter / "train_metrics.json", {"steps": 4, "peak_memory_mb": 2100.0,
                                                "peak_cuda_allocated_mb": 801.5,
                                                "peak_cuda_reserved_mb": 1024.0})
    row = next(r for r in Catalog(tmp_path / "config.yaml", tmp_path).rows() if r["experiment"] == name)
    assert (row["peak_cuda_reserved_mb"], row["peak_cuda_allocated_mb"], row["peak_memory_mb"]) == (
        1024.0, 801.5, 2100.0)
    script = (REPO / "workflow_scripts" / "studio" / "static" / "studio.js").read_text()
    assert '["peak_cuda_reserved_mb", "GPU MB"]' in script and '["peak_memory_mb", "host RSS MB"]' in script
