"""benchmarks/gpu_suite.py and benchmarks/sweep_pool_tiles.py exit cleanly, saying why, where
there is no CUDA."""
import pytest

no_cuda = pytest.mark.skipif("__import__('torch').cuda.is_available()",
                             reason="a CUDA device is present: the benchmark would run")


@no_cuda
def test_suite_without_cuda_exits_0_with_a_message(capsys):
    from benchmarks import gpu_suite

    assert gpu_suite.main([]) == 0
    assert "no CUDA device visible" in capsys.readouterr().out


@no_cuda
def test_tile_sweep_without_cuda_exits_0_with_a_message(capsys):
    from benchmarks import sweep_pool_tiles

    assert sweep_pool_tiles.main() == 0
    assert "no CUDA device visible" in capsys.readouterr().out
