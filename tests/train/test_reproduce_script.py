"""``configs/reproduce.sh`` with a stand-in ``postemb`` that logs its arguments: which commands
each stage runs, and that nothing it runs by default writes into the repository (its report goes
under $RUNS; replacing the shipped model takes the ``ship`` stage by name)."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *stages, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "postemb"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    fake.chmod(0o755)
    environ = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RUNS=str(tmp_path / "runs"), **env)
    subprocess.run(["bash", "configs/reproduce.sh", *stages], cwd=ROOT, env=environ, check=True,
                   capture_output=True, text=True)
    return (tmp_path / "calls").read_text().splitlines()


def test_the_default_stages_never_touch_the_shipped_model_or_the_committed_reports(tmp_path):
    shipped = {p: p.read_bytes() for p in (ROOT / "postemb_rt/models/default").iterdir() if p.is_file()}
    calls = _run(tmp_path)
    assert calls[0] == "teacher fetch" and calls[1].startswith("train --config configs/v3/default.json")
    assert sum(c.startswith("train ") for c in calls) == 1 + 5 + 2 * 6  # multi, singles, two more seeds of each
    (evaluate,) = [c for c in calls if c.startswith("eval ")]
    assert f"--out {tmp_path}/runs/report" in evaluate
    assert {p: p.read_bytes() for p in shipped} == shipped


def test_a_recipe_without_single_task_configs_runs_its_multi_task_seeds(tmp_path):
    calls = _run(tmp_path, "multi", "singles", "seeds",
                 MULTI="configs/v4/steps1600/light_prefixes.json", CONFIGS="configs/v4")
    assert [c.split(" --out ")[0] for c in calls] == [
        "train --config configs/v4/steps1600/light_prefixes.json",
        "train --threads 2 --config configs/v4/steps1600/light_prefixes.json --seed 1",
        "train --threads 2 --config configs/v4/steps1600/light_prefixes.json --seed 2"]
