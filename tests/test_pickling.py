"""Pickling an Encoder (``st_api.SentenceTransformerAPI.__reduce__``): the load call travels, so
an Encoder can be handed to multiprocessing, joblib, Ray or Spark as a SentenceTransformer can;
where it lands it is loaded again with the same settings, and refused if the model differs."""
import multiprocessing
import pickle

import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from tests.conftest import SAMPLE_TEXTS
from tests.st_models import build_st_folder

pytest.importorskip("sentence_transformers")


def _encode_in_child(enc, texts):
    """Run in a spawned process: what the unpickled Encoder says and returns."""
    return enc.vector_version, enc.similarity_fn_name, enc.max_length, enc.encode(texts)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    return build_st_folder(tmp_path / "st")


def test_an_encoder_sent_to_another_process_gives_the_same_vectors_with_its_settings(folder):
    with Encoder.from_pretrained(folder, backend="torch", long_posts="chunk") as enc:
        enc.max_seq_length = 16  # settings changed after the load travel too
        enc.similarity_fn_name = "dot"
        want = enc.encode(SAMPLE_TEXTS)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            version, fn, max_length, got = pool.apply(_encode_in_child, (enc, SAMPLE_TEXTS))
        assert (version, fn, max_length) == (enc.vector_version, "dot", 16) and "+max16+chunk" in version
        np.testing.assert_array_equal(got, want)


def test_a_registered_model_travels_by_name(base_torch):
    again = pickle.loads(pickle.dumps(base_torch))
    with again:
        assert again.describe()["model_path"] == base_torch.describe()["model_path"]
        assert (again.backend.name, again.vector_version) == ("torch", base_torch.vector_version)
        np.testing.assert_array_equal(again.encode(SAMPLE_TEXTS[:3]), base_torch.encode(SAMPLE_TEXTS[:3]))


def test_a_model_whose_files_changed_since_pickling_is_refused(folder):
    from safetensors.numpy import load_file, save_file

    with Encoder.from_pretrained(folder, backend="torch") as enc:
        blob = pickle.dumps(enc)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v + np.float32(0.01) if v.dtype == np.float32 else v for k, v in tensors.items()}, weights)
    with pytest.raises(ValidationError, match=r"the model here differs from the one pickled .* Fix: install the same"):
        pickle.loads(blob)


def test_an_encoder_not_built_by_from_pretrained_says_how_to_build_one(base_torch):
    enc = Encoder(base_torch.model, base_torch.backend, "by hand")
    with pytest.raises(TypeError, match=r"not built by from_pretrained.*Fix: build it with Encoder.from_pretrained"):
        pickle.dumps(enc)
