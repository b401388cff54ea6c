"""Tile sweep for the Triton masked_mean_pool_l2 kernel on a CUDA machine.

    python benchmarks/sweep_pool_tiles.py [--out FILE.json]

For each shape (D = 50 projection, every token unmasked) and dtype (fp16, fp32), times every
combination of tokens per tile, features per tile, warps and programs per SM by GPU time
(``gpu_suite.kernel_gpu_ms``: CUDA graph, L2 flushed before each call, the host's launch
cost not counted) and prints the best four with their GB/s, the fraction of the
device-to-device copy bandwidth measured in the same run, the defaults' own figure and the
worst. Last it names the configuration with the highest geometric mean, over every shape and
dtype, of its GB/s as a fraction of that case's best: the kernel's TILE_DEFAULTS come from
that line. ``--out`` writes every configuration's figures as JSON. Without CUDA it says so
and exits 0.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GRID = {"block_s": (16, 32, 64), "block_h": (64, 128, 256), "num_warps": (4, 8), "programs_per_sm": (4, 8)}
SHAPES = ((256, 64, 384), (64, 256, 384), (1024, 128, 384), (32, 512, 1024), (8, 4096, 1024))


def rank(cases: list[dict]) -> list[tuple[float, dict]]:
    """(score, tiles) for every configuration, best first. A configuration's score is the
    geometric mean over cases of its GB/s divided by that case's best GB/s: 1.0 means best
    everywhere. Every case lists the same configurations in the same order."""
    def score(i: int) -> float:
        return math.exp(sum(math.log(c["configs"][i]["gbs"] / max(x["gbs"] for x in c["configs"]))
                            for c in cases) / len(cases))

    return sorted(((score(i), cfg["tiles"]) for i, cfg in enumerate(cases[0]["configs"])), key=lambda r: -r[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write every configuration's GB/s per case to this JSON file")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("sweep_pool_tiles: no CUDA device visible; nothing to measure. Run this on a GPU machine.")
        return 0

    from benchmarks.gpu_suite import copy_bandwidth_gbs, kernel_gpu_ms
    from postemb_rt.kernels import masked_mean_pool_l2 as mod
    from postemb_rt.ops.reference import masked_mean_pool_l2_ref

    bw = copy_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}: device copy bandwidth {bw:.0f} GB/s; defaults {mod.TILE_DEFAULTS}")
    g = torch.Generator(device="cuda").manual_seed(0)
    cases = []
    for (b, s, h), dtype in itertools.product(SHAPES, (torch.float16, torch.float32)):
        hidden = torch.randn((b, s, h), generator=g, device="cuda").to(dtype)
        mask = torch.ones((b, s), dtype=torch.int64, device="cuda")
        w = torch.randn((h, 50), generator=g, device="cuda") / h**0.5
        exact = masked_mean_pool_l2_ref(hidden, mask, w, dtype=torch.float64)
        nbytes = hidden.numel() * hidden.element_size() + mask.numel() * 8 + w.numel() * 4
        results = []
        for values in itertools.product(*GRID.values()):
            tiles = dict(zip(GRID, values))
            fn = lambda: mod._launch(hidden, mask, w, None, True, **tiles)  # noqa: E731
            err = (fn().double() - exact).abs().max().item()
            gbs = nbytes / (kernel_gpu_ms(fn) / 1e3) / 1e9
            results.append((gbs, err, tiles))
        case = f"{b}x{s}x{h} {str(dtype)[6:]}"
        cases.append({"case": case, "bytes": nbytes,
                      "configs": [{"tiles": t, "gbs": round(gbs, 1), "max_abs_err": e} for gbs, e, t in results]})
        results.sort(key=lambda r: -r[0])
        best = "; ".join(f"{gbs:.0f} GB/s ({100 * gbs / bw:.0f}%) {t} err {e:.0e}" for gbs, e, t in results[:4])
        default = next(r[0] for r in results if r[2] == mod.TILE_DEFAULTS)
        print(f"{case}: defaults {default:.0f} GB/s ({100 * default / bw:.0f}%) | best {best} "
              f"| worst {results[-1][0]:.0f} GB/s", flush=True)

    scores = rank(cases)
    default_score = next(sc for sc, t in scores if t == mod.TILE_DEFAULTS)
    print("best overall (geometric mean of GB/s / each case's best): "
          + "; ".join(f"{sc:.3f} {t}" for sc, t in scores[:3]) + f" | defaults {default_score:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "copy_gbs": round(bw, 1),
                                              "defaults": mod.TILE_DEFAULTS, "cases": cases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
