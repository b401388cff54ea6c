"""Tile sweep for the Triton masked_mean_pool_l2 kernel on a CUDA machine.

    python benchmarks/sweep_pool_tiles.py

For each shape (D = 50 projection, every token unmasked) and dtype (fp16, fp32), times every
combination of tokens per tile, features per tile, warps and programs per SM with
triton.testing.do_bench (GPU time, L2 flushed) and prints the best four with their GB/s, the
fraction of the device-to-device copy bandwidth measured in the same run, and the worst.
The kernel's TILE_DEFAULTS come from this sweep. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GRID = {"block_s": (16, 32, 64), "block_h": (64, 128, 256), "num_warps": (4, 8), "programs_per_sm": (4, 8)}
SHAPES = ((256, 64, 384), (64, 256, 384), (1024, 128, 384), (32, 512, 1024), (8, 4096, 1024))


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("sweep_pool_tiles: no CUDA device visible; nothing to measure. Run this on a GPU machine.")
        return 0
    from triton.testing import do_bench

    from benchmarks.gpu_suite import copy_bandwidth_gbs
    from postemb_rt.kernels import masked_mean_pool_l2 as mod
    from postemb_rt.ops.reference import masked_mean_pool_l2_ref

    bw = copy_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}: device copy bandwidth {bw:.0f} GB/s; defaults {mod.TILE_DEFAULTS}")
    g = torch.Generator(device="cuda").manual_seed(0)
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
            gbs = nbytes / (do_bench(fn, warmup=5, rep=30) / 1e3) / 1e9
            results.append((gbs, err, tiles))
        results.sort(key=lambda r: -r[0])
        best = "; ".join(f"{gbs:.0f} GB/s ({100 * gbs / bw:.0f}%) {t} err {e:.0e}" for gbs, e, t in results[:4])
        default = next(r[0] for r in results if r[2] == mod.TILE_DEFAULTS)
        print(f"{b}x{s}x{h} {str(dtype)[6:]}: defaults {default:.0f} GB/s ({100 * default / bw:.0f}%) | best {best} "
              f"| worst {results[-1][0]:.0f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
