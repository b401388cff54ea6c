"""benchmarks/profile_cpu.py's OpenVINO profile: the counters it sums are the inference's own."""
import pytest

from benchmarks.profile_cpu import median_batch, openvino_profile

TEXTS = [f"post {i}: " + "word " * (i % 37) for i in range(300)]


def test_median_batch_is_one_planned_batch_of_the_workload(base_onnx):
    ids, mask = median_batch(base_onnx, TEXTS)
    assert ids.shape == mask.shape and 1 <= ids.shape[0] <= 64
    lengths = mask.sum(1)
    assert lengths.max() == ids.shape[1] and lengths.min() >= 3  # [CLS] post ... [SEP], padded to the longest


def test_openvino_profile_counts_add_up_to_the_inference_and_name_the_kernels():
    from postemb_rt import Encoder

    enc = Encoder.from_pretrained("base", backend="openvino", precision="fp32")
    compiled = enc.backend._compiled
    shape, wall, by, impl = openvino_profile(enc, TEXTS, repeats=3)
    nodes = sum(by.values())
    assert 0.7 * wall <= nodes <= 1.3 * wall, (nodes, wall)  # static shape: the counters are this inference's
    assert max(by, key=by.get) == "FullyConnected"  # the matmuls dominate a 6-layer encoder
    assert sum(impl.values()) == pytest.approx(nodes) and any(k.startswith("FullyConnected: ") for k in impl)
    assert enc.backend._compiled is compiled and shape[0] <= 64  # profiled on its own compiled copy
