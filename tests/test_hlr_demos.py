"""The HyperbolicLR study's oscillation, integral and Compare-mode demos (config/config.yaml, group
demo_extra) render through Snakemake: budget, curves and SLCD surfaces on the regression tasks' test
loss, and the Compare-mode table."""

from __future__ import annotations

import csv
import math

import pytest
import yaml

from conftest import REPO, run_snakemake, write_yaml

pytestmark = pytest.mark.workflow

DEMOS = ["demo_hlr_osc_budget", "demo_hlr_osc_curves", "demo_hlr_osc_slcd", "demo_hlr_integral_budget",
         "demo_hlr_integral_slcd", "demo_hlr_compare"]


@pytest.mark.slow  # 20 small training runs and three generated datasets
def test_the_hlr_demo_surfaces_render(tmp_path):
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["surfaces"]
    assert set(DEMOS) <= set(base) and all(base[name]["group"] == "demo_extra" for name in DEMOS)
    config = write_yaml(tmp_path / "demos.yaml", {"surfaces": {name: (base[name] if name in DEMOS else None)
                                                               for name in base}})
    work = tmp_path / "work"
    work.mkdir()
    run_snakemake(["--cores", "2", "demo_extra", "--configfile", str(config)], work, timeout=1800)
    surfaces = work / "results" / "surfaces"
    for name in DEMOS:
        rows = list(csv.DictReader((surfaces / name / "table.csv").open()))
        assert (surfaces / name / "figure.png").stat().st_size > 0 and rows, name
        assert all(r["status"] == "ok" for r in rows if "status" in r), (name, rows)
    compare = list(csv.DictReader((surfaces / "demo_hlr_compare" / "table.csv").open()))
    assert len(compare) == 4 and all(0 < float(r["final_mean"]) < math.log(10) for r in compare), compare
    for name, schedules in (("demo_hlr_osc_slcd", {"N", "C", "EH"}), ("demo_hlr_integral_slcd", {"N", "EH"})):
        rows = list(csv.DictReader((surfaces / name / "table.csv").open()))
        assert {r["schedule"] for r in rows} == schedules, rows
