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

    assert sweep_pool_tiles.main([]) == 0
    assert "no CUDA device visible" in capsys.readouterr().out


def test_tile_ranking_prefers_the_configuration_good_everywhere():
    """The sweep's choice: the geometric mean of each case's GB/s over that case's best, so a
    configuration that is best on one case and poor on another loses to one near the top in both."""
    from benchmarks.sweep_pool_tiles import rank

    a, b, c = {"block_s": 16}, {"block_s": 32}, {"block_s": 64}
    cases = [{"configs": [{"tiles": a, "gbs": 100.0}, {"tiles": b, "gbs": 90.0}, {"tiles": c, "gbs": 30.0}]},
             {"configs": [{"tiles": a, "gbs": 40.0}, {"tiles": b, "gbs": 95.0}, {"tiles": c, "gbs": 100.0}]}]
    scores = rank(cases)
    assert [t for _, t in scores] == [b, a, c]
    assert scores[0][0] == pytest.approx((0.9 * 0.95) ** 0.5)
    assert scores[1][0] == pytest.approx(0.4 ** 0.5)
