"""Eval smoke test on the tiny data, through the CLI."""
import json

from postemb_rt.cli import main
from postemb_rt.train import evaluate as E


def test_eval_command_writes_report_with_all_rows(smoke_model, tiny_data, tmp_path, capsys):
    model, _ = smoke_model
    out = tmp_path / "reports"
    rc = main(["eval", "--model", f"multitask={model}", "--model", f"single-emoji={model}", "--out", str(out),
               "--data", str(tiny_data), "--backend", "torch", "--pca-posts", "40", "--throughput-posts", "16"])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert set(report["rows"]) == {"base", "base-pca50", "multitask", "single-emoji"}
    for name, row in report["rows"].items():
        for col in E.COLUMNS[1:]:
            lo, hi = (-100, 100) if col == "sts_spearman" else (0, 1)
            assert lo <= row[col] <= hi, (name, col)
    assert report["rows"]["base"]["dim"] == 384 and report["rows"]["base-pca50"]["dim"] == 50
    assert report["rows"]["multitask"]["dim"] == 50 and report["rows"]["multitask"]["trained_parameters"] > 0
    assert report["throughput"]["model_dim"] == 50 and report["throughput"]["model_posts_per_s"] > 0
    assert [t["target"][:2] for t in report["targets"]] == ["1.", "2.", "3.", "4."]
    # every comparison carries its paired bootstrap interval, "delta [lo, hi]" with lo <= delta <= hi
    t1 = report["targets"][0]["ci"]
    assert set(t1) == {"topic", "emoji", "hashtag", "emotion", "sts"}
    for text in t1.values():
        d, lo, hi = (float(v) for v in text.replace("[", "").replace("]", "").replace(",", "").split())
        assert lo <= d + 1e-9 and d <= hi + 1e-9, text
    assert set(report["targets"][1]["ci"]) == {"emoji", "mean"}
    assert all(set(r["probe_c"]) == {"sentiment", "hate", "offensive"} for r in report["rows"].values())
    md = (out / "eval.md").read_text()
    assert "| base-pca50 |" in md and "## Targets" in md and "95% interval" in md
    assert "Training seeds" not in md
    # a second run reuses the cached rows
    assert main(["eval", "--model", f"multitask={model}", "--out", str(out), "--data", str(tiny_data),
                 "--backend", "torch", "--pca-posts", "40", "--throughput-posts", "0"]) == 0
    assert "multitask: cached" in capsys.readouterr().out
    # a further training seed of the main model (here: the same model under a seed name) adds the seed section
    assert main(["eval", "--model", f"multitask={model}", "--model", f"multitask-seed1={model}", "--out", str(out),
                 "--data", str(tiny_data), "--backend", "torch", "--pca-posts", "40", "--throughput-posts", "0"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["seed_means"]["multitask"]["seeds"] == 2
    assert report["seed_sds"]["multitask"]["auc_topic"] == 0.0  # the same model twice
    assert [t["target"][:2] for t in report["seed_targets"]] == ["1.", "2.", "3.", "4."]
    assert "## Training seeds" in (out / "eval.md").read_text()
