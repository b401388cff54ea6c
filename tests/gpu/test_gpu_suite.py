"""benchmarks/gpu_suite.py exits cleanly, saying why, where there is no CUDA."""
import pytest


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="a CUDA device is present: the suite would run")
def test_suite_without_cuda_exits_0_with_a_message(capsys):
    from benchmarks import gpu_suite

    assert gpu_suite.main([]) == 0
    assert "no CUDA device visible" in capsys.readouterr().out
