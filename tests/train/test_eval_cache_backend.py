"""The eval row cache answers only for the backend asked for."""
import numpy as np

from postemb_rt.train import evaluate as E
from postemb_rt.train import eval_rows as R


def test_rows_cached_on_one_backend_are_computed_again_for_another(tiny_data, tmp_path, monkeypatch):
    """The cache key held no backend: `postemb eval --backend openvino` into an --out that a torch run
    had filled printed "cached" and reported the torch rows, so a check of another backend never ran it."""
    calls = []

    def fake_embed_all(model, texts, backend, spec, declared=()):  # a fixed 8-d embedding per text
        calls.append(backend)
        x = np.stack([np.random.default_rng(list(t.encode()) or [0]).normal(size=8) for t in texts])
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        return dict(zip(texts, x)), {"model_version": model, "dim": 8, "backend": backend, "embed_seconds": 0.0,
                                     "texts": len(texts)}

    monkeypatch.setattr(R, "embed_all", fake_embed_all)
    # the per-item outputs and metrics (probe fits: seconds) are not what is checked here
    monkeypatch.setattr(R, "outputs", lambda lookup, data, spec: {"knn": np.zeros(3)})
    monkeypatch.setattr(R, "metrics_from", lambda out, data: {})
    spec, out = E.EvalSpec(pca_posts=20, pca_dim=4), tmp_path / "out"
    run = lambda backend: R.evaluate_rows([("m", "base")], tiny_data, out, spec, backend=backend, baselines=False,
                                          progress=lambda m: None)[0]
    assert run("torch")["m"]["backend"] == "torch"
    assert run("torch")["m"]["backend"] == "torch"
    assert calls == ["torch"]  # the same backend: cached
    assert run("onnxruntime")["m"]["backend"] == "onnxruntime"
    assert calls == ["torch", "onnxruntime"]


def test_embedding_every_text_shows_a_progress_bar_on_a_terminal(monkeypatch):
    """The longest step of `postemb eval` (every text of every row) ran without a bar; on a terminal it has
    one now, and elsewhere (CI logs, pipes) encode's own rule holds (shown when the logger is at INFO)."""
    import io
    import sys

    from postemb_rt import encoder as encoder_mod

    seen = []

    class FakeEncoder:
        model_version, dim = "fake", 4
        backend = type("B", (), {"name": "torch"})()

        @classmethod
        def from_pretrained(cls, *a, **k):
            return cls()

        def encode(self, texts, batch_size=32, show_progress_bar=None, **k):
            seen.append(show_progress_bar)
            return np.ones((len(texts), 4), np.float32) / 2

        def close(self):
            pass

    monkeypatch.setattr(encoder_mod, "Encoder", FakeEncoder)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stderr, shown in ((Tty(), True), (io.StringIO(), None)):
        monkeypatch.setattr(sys, "stderr", stderr)
        table, _ = R.embed_all("m", ["a", "b"], "torch", E.EvalSpec())
        assert seen.pop() is shown and set(table) == {"a", "b"}
