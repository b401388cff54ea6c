"""postemb_rt/engine_meta.py: shape flags, optimisation profiles, engine.json and its checks."""
import json

import pytest

from postemb_rt.engine_meta import (INPUTS, EngineMeta, ShapeProfile, build_profiles, check_meta, check_shape,
                                    parse_shape_spec, row_chunks)
from postemb_rt.errors import EngineMismatchError, ValidationError


def meta(**kw):
    p = ShapeProfile((1, 1), (32, 64), (128, 256)).as_dict()
    base = dict(precision="fp16", inputs={n: p for n in INPUTS}, hidden_size=384, model_version="m1",
                tensorrt_version="10.9.0", compute_capability="9.0", device_name="NVIDIA H100")
    return EngineMeta(**{**base, **kw})


@pytest.mark.parametrize("spec, want", [
    ("32x128", {"input_ids": (32, 128), "attention_mask": (32, 128)}),
    (" 4 x 7 ", {"input_ids": (4, 7), "attention_mask": (4, 7)}),
    ("input_ids:8x16", {"input_ids": (8, 16), "attention_mask": (8, 16)}),
    ("input_ids:8x16,attention_mask:8x16", {"input_ids": (8, 16), "attention_mask": (8, 16)}),
    ("", {}), (None, {}),
])
def test_shape_spec_parses_plain_and_named_forms(spec, want):
    assert parse_shape_spec(spec, "--max-shape") == want


@pytest.mark.parametrize("spec, match", [
    ("32", r"`--max-shape` shapes must be BATCHxSEQ.*Given: '32'"),
    ("0x16", r"dimensions must be >= 1"),
    ("token_type_ids:1x1", r"names input 'token_type_ids'"),
    ("input_ids:1x1,input_ids:2x2", r"gives input 'input_ids' twice"),
    ("1x1,2x2", r"mixes named and unnamed"),
])
def test_shape_spec_errors_name_flag_and_value(spec, match):
    with pytest.raises(ValidationError, match=match):
        parse_shape_spec(spec, "--max-shape")


def test_default_profile_spans_one_row_to_max_batch_by_max_length():
    p = build_profiles(256)
    assert set(p) == set(INPUTS)
    assert p["input_ids"] == ShapeProfile((1, 1), (32, 64), (128, 256)) == p["attention_mask"]


def test_opt_is_capped_by_a_small_max_shape():
    assert build_profiles(256, max_spec="8x32")["input_ids"] == ShapeProfile((1, 1), (8, 32), (8, 32))


def test_the_default_opt_is_raised_to_a_large_min_shape():
    """--min-shape 64x128 alone failed 'min <= opt' against the default opt 32x64 the user never gave."""
    assert build_profiles(256, min_spec="64x128")["input_ids"] == ShapeProfile((64, 128), (64, 128), (128, 256))


@pytest.mark.parametrize("kw, match", [
    ({"max_spec": "8x512"}, r"seq must be <= the model's max_length \(256\).*8x512"),
    ({"min_spec": "4x4", "opt_spec": "2x8"}, r"batch must satisfy min <= opt <= max.*min 4, opt 2"),
    ({"opt_spec": "8x300"}, r"seq must satisfy min <= opt <= max"),
    ({"max_spec": "input_ids:8x32,attention_mask:8x16"}, r"same shape"),
    ({"max_batch": 0}, r"`--max-batch` must be >= 1"),
])
def test_profile_rules_raise_with_the_offending_values(kw, match):
    with pytest.raises(ValidationError, match=match):
        build_profiles(256, **kw)


def test_engine_json_round_trips(tmp_path):
    m = meta(engine_sha256="ab", built_at="2026-11-25T21:00:00+00:00")
    m.write(tmp_path)
    back = EngineMeta.read(tmp_path)
    assert back == m and back.profile() == ShapeProfile((1, 1), (32, 64), (128, 256))


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(surprise=1), r"unknown keys \['surprise'\]"),
    (lambda d: d.pop("model_version"), r"lacks keys \['model_version'\]"),
    (lambda d: d.update(format_version=99), r"format_version 99"),
    (lambda d: d.update(precision="int3"), r"precision 'int3'"),
    (lambda d: d["inputs"].pop("attention_mask"), r"no profile for input 'attention_mask'"),
])
def test_bad_engine_json_is_an_engine_mismatch(tmp_path, edit, match):
    raw = json.loads(meta().to_json())
    edit(raw)
    (tmp_path / "engine.json").write_text(json.dumps(raw))
    with pytest.raises(EngineMismatchError, match=match):
        EngineMeta.read(tmp_path)


def test_missing_engine_json_names_the_build_command(tmp_path):
    with pytest.raises(EngineMismatchError, match=r"has no engine.json.*export/build_engine.py --onnx"):
        EngineMeta.read(tmp_path)


def test_matching_meta_passes():
    check_meta(meta(), "/m", model_version="m1", hidden_size=384, tensorrt_version="10.9.0", compute_capability="9.0")
    check_meta(meta(), "/m", model_version="m1", hidden_size=384)  # no tensorrt / GPU: those are not checked


def test_every_mismatch_is_listed_with_the_rebuild_command():
    with pytest.raises(EngineMismatchError) as err:
        check_meta(meta(), "/models/x", model_version="m2", hidden_size=768, tensorrt_version="10.11.0",
                   compute_capability="8.0")
    msg = str(err.value)
    for part in ("engine built from 'm1', postemb.json says 'm2'", "hidden_size: engine 384, postemb.json 768",
                 "built with 10.9.0, installed 10.11.0", "compute capability 9.0 (NVIDIA H100), this GPU is 8.0",
                 "python export/build_engine.py --onnx /models/x/model.onnx --out /models/x --fp16"):
        assert part in msg


def test_an_onnx_exported_again_since_the_build_is_a_mismatch():
    """A re-export into the engine's folder kept the old model.plan, taken as valid under the same version."""
    built = meta(onnx_sha256="aa" * 32)
    check_meta(built, "/m", model_version="m1", hidden_size=384, onnx_sha256="aa" * 32)
    check_meta(meta(), "/m", model_version="m1", hidden_size=384, onnx_sha256="bb" * 32)  # built before the field
    with pytest.raises(EngineMismatchError, match=r"model.onnx: the engine was built from another model.onnx .*Fix: "
                                                  r"rebuild the engine"):
        check_meta(built, "/m", model_version="m1", hidden_size=384, onnx_sha256="bb" * 32)


def test_seq_outside_profile_names_max_length_and_rebuild():
    check_shape(meta(), "/m", 256)
    with pytest.raises(EngineMismatchError, match=r"seq length 300 is outside .*seq 1..256.*max_length <= 256"):
        check_shape(meta(), "/m", 300)


@pytest.mark.parametrize("rows, cap, want", [(5, 128, [(0, 5)]), (128, 128, [(0, 128)]),
                                             (300, 128, [(0, 128), (128, 256), (256, 300)]), (0, 4, [])])
def test_rows_beyond_the_profile_are_split(rows, cap, want):
    assert row_chunks(rows, cap) == want
