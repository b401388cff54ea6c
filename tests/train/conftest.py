"""Tiny TweetEval/STS-B-shaped data made by the tests themselves (never ../shared/data)."""
from __future__ import annotations

import random

import pytest

EMOJI = ["_red_heart_", "_fire_", "_sun_"]
EMOJI_WORDS = [["love", "heart", "sweet"], ["hot", "lit", "burning"], ["sunny", "beach", "summer"]]
EMOTIONS = ["anger", "joy"]
EMOTION_WORDS = [["furious", "mad", "hate this"], ["happy", "great", "delighted"]]
TOPICS = {"climate": ["carbon", "warming", "planet"], "hillary": ["election", "campaign", "president"]}
TAGS = ["blessed", "BeachLife", "mondays"]
FILLER = ["today", "with friends", "again", "so much", "right now", "at home", "this week"]


def _post(rng, words, tag=None):
    text = f"{rng.choice(words)} {rng.choice(FILLER)} {rng.choice(words)}"
    return f"{text} #{tag}" if tag else text


def _write_split(folder, split, texts, labels):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_text.txt").write_text("\n".join(texts) + "\n")
    (folder / f"{split}_labels.txt").write_text("\n".join(map(str, labels)) + "\n")


def _labelled(folder, names, words, rng, sizes, tags=True):
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "mapping.txt").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(names)))
    for split, n in sizes.items():
        ys = [i % len(names) for i in range(n)]
        texts = [_post(rng, words[y], TAGS[y % len(TAGS)] if tags and i % 2 else None) for i, y in enumerate(ys)]
        _write_split(folder, split, texts, ys)


def make_tiny_data(root):
    """A data root with every file the pair tasks and the evaluation read (a few dozen lines each)."""
    rng = random.Random(0)
    tw = root / "tweeteval"
    sizes = {"train": 48, "val": 12, "test": 30}
    _labelled(tw / "emoji", EMOJI, EMOJI_WORDS, rng, sizes)
    _labelled(tw / "emotion", EMOTIONS, EMOTION_WORDS, rng, sizes)
    for task in ("hate", "offensive"):
        _labelled(tw / task, ["no", "yes"], [["nice", "kind"], ["awful", "nasty"]], rng, sizes, tags=False)
    _labelled(tw / "sentiment", ["negative", "neutral", "positive"], [["bad"], ["ok"], ["good"]], rng,
              {"val": 24, "test": 24}, tags=False)
    stance = tw / "stance"
    stance.mkdir(parents=True, exist_ok=True)
    (stance / "mapping.txt").write_text("0\tnone\n1\tagainst\n2\tfavor\n")
    for target, words in TOPICS.items():
        for split, n in sizes.items():
            _write_split(stance / target, split, [_post(rng, words, TAGS[i % 3]) + " #SemST" for i in range(n)],
                         [i % 3 for i in range(n)])
    sts = root / "stsb"
    sts.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 40), ("dev", 30)):
        rows = ["sentence1,sentence2,score"]
        for i in range(n):
            w = rng.choice(EMOJI_WORDS + EMOTION_WORDS)
            late = "" if name == "train" else " tonight"  # dev pairs are no train pairs: held out
            if i % 2:
                rows.append(f"a dog is {w[0]} today{late},a dog is {w[0]} now,{4 + (i % 3) / 2}")
            else:
                rows.append(f"a man plays {w[1]} music{late},\"the cat sleeps, quietly\",{(i % 3) / 3:.2f}")
        (sts / f"stsb-en-{name}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("tinydata"))


SMOKE = {
    "model_version": "smoke-mt50", "steps": 30, "batch_size": 8, "lr": 3e-3, "head_lr": 1e-2,
    "pca_posts": 64, "max_length": 32, "log_every": 5, "seed": 0, "mixing_temperature": 1.0,
}


@pytest.fixture(scope="session")
def smoke_model(tiny_data, tmp_path_factory):
    """(model dir, summary) of the CI smoke training run on the tiny data."""
    from postemb_rt.train.config import TrainConfig
    from postemb_rt.train.trainer import train

    out = tmp_path_factory.mktemp("smoke") / "model"
    summary = train(TrainConfig(data=str(tiny_data), **SMOKE), out, progress=lambda m: None)
    return out, summary
