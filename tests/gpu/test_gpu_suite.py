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


def test_suite_keeps_the_kernel_table_when_the_reference_model_cannot_load(capsys, tmp_path, monkeypatch):
    """A fresh GPU machine without the base encoder (no network, no bundle): before, the exception
    escaped main() after the kernel measurements and neither printed nor wrote them."""
    import torch

    from benchmarks import gpu_suite
    from postemb_rt import Encoder

    def no_model(*a, **k):
        raise ImportError("No module named 'transformers'")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake H100")
    monkeypatch.setattr(gpu_suite, "copy_bandwidth_gbs", lambda: 3000.0)
    monkeypatch.setattr(gpu_suite, "kernel_rows", lambda bw: ["| 256x64x384 | float16 | 50 | triton | 1900 |"])
    monkeypatch.setattr(Encoder, "from_pretrained", no_model)
    out = tmp_path / "suite.md"
    assert gpu_suite.main(["--n", "8", "--long", "2", "--out", str(out)]) == 1
    printed, written = capsys.readouterr().out, out.read_text()
    for text in (printed, written):
        assert "| 256x64x384 | float16 | 50 | triton | 1900 |" in text and "copy bandwidth 3000 GB/s" in text
        assert "reference failed to load: ImportError: No module named 'transformers'" in text


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
