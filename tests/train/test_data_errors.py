"""Bad training data stops with a message naming the file and the line."""
import json
import shutil

import pytest

from postemb_rt.errors import ValidationError
from postemb_rt.train.config import TrainConfig
from postemb_rt.train.trainer import train
from postemb_rt.train import tasks as T


@pytest.fixture
def data(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def _lines(path):
    return path.read_text().splitlines()


def test_empty_line_names_file_and_line(data):
    f = data / "tweeteval/emotion/train_text.txt"
    lines = _lines(f)
    lines[6] = "   "
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError, match=r"emotion/train_text.txt:7: empty text"):
        T.load_split(data, "train")


def test_label_text_count_mismatch_names_both_files_and_line(data):
    f = data / "tweeteval/emoji/train_labels.txt"
    f.write_text("\n".join(_lines(f)[:-3]) + "\n")
    with pytest.raises(ValidationError, match=r"emoji/train_text.txt has 48 lines but .*emoji/train_labels.txt has 45: "
                                              r"line 46 has no partner"):
        T.load_split(data, "train")


def test_unknown_label_id_names_file_and_line(data):
    f = data / "tweeteval/stance/climate/train_labels.txt"
    lines = _lines(f)
    lines[2] = "7"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError, match=r"climate/train_labels.txt:3: unknown label id 7"):
        T.load_split(data, "train")


def test_non_integer_label_names_file_and_line(data):
    f = data / "tweeteval/emoji/train_labels.txt"
    lines = _lines(f)
    lines[0] = "fire"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError, match=r"emoji/train_labels.txt:1: label must be an integer"):
        T.load_split(data, "train")


def test_bad_sts_score_names_file_and_line(data):
    f = data / "stsb/stsb-en-train.csv"
    lines = _lines(f)
    lines[3] = "a,b,lots"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError, match=r"stsb-en-train.csv:4: score must be a number"):
        train(TrainConfig(data=str(data), tasks=["sts"], steps=1), data / "out", progress=lambda m: None)


def test_test_splits_keep_empty_posts(data):
    f = data / "tweeteval/emoji/test_text.txt"
    lines = _lines(f)
    lines[0] = ""
    f.write_text("\n".join(lines) + "\n")
    assert T.load_split(data, "test").emoji.texts[0] == ""


@pytest.mark.parametrize("task", ["sentiment", "hate", "offensive"])
def test_zero_shot_tasks_are_refused(tmp_path, task):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"tasks": ["emoji", task]}))
    with pytest.raises(ValidationError, match=f"must not include '{task}'"):
        TrainConfig.from_file(p)


def test_unknown_config_key_is_refused(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"stepz": 3}))
    with pytest.raises(ValidationError, match=r"unknown keys \['stepz'\]"):
        TrainConfig.from_file(p)


def test_a_bom_and_crlf_endings_are_read_as_plain_utf8_lines(data, tiny_data):
    """Files saved by Windows tools: a UTF-8 BOM and CRLF endings change no text, label or name."""
    want = T.load_split(tiny_data, "train")
    for rel in ("tweeteval/emotion/train_text.txt", "tweeteval/emotion/train_labels.txt",
                "tweeteval/emotion/mapping.txt", "stsb/stsb-en-train.csv"):
        f = data / rel
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes().replace(b"\n", b"\r\n"))
    got = T.load_split(data, "train")
    assert (got.emotion.texts, got.emotion.labels, got.emotion.names) == (
        want.emotion.texts, want.emotion.labels, want.emotion.names)
    from postemb_rt.train.data import read_sts
    assert read_sts(data / "stsb/stsb-en-train.csv") == read_sts(tiny_data / "stsb/stsb-en-train.csv")


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85", "\x0c"])
def test_a_post_holding_a_unicode_line_break_stays_one_post(data, brk):
    f = data / "tweeteval/emoji/train_text.txt"
    lines = _lines(f)
    lines[4] = f"first part{brk}second part"
    f.write_text("\n".join(lines) + "\n")
    emoji = T.load_split(data, "train").emoji
    assert len(emoji) == 48 and emoji.texts[4] == f"first part{brk}second part"


@pytest.mark.parametrize("rel", ["tweeteval/emotion/train_text.txt", "stsb/stsb-en-train.csv"])
def test_bytes_that_are_not_utf8_name_file_and_line(data, rel):
    f = data / rel
    lines = f.read_bytes().split(b"\n")
    lines[2] = b"caf\xe9 au lait" + (b",x,3.0" if rel.endswith(".csv") else b"")
    f.write_bytes(b"\n".join(lines))
    with pytest.raises(ValidationError, match=rf"{rel.split('/')[-1]}:3: not UTF-8 .*Fix: save it as UTF-8"):
        T.build_task(T.load_split(data, "train"), "sts")


@pytest.mark.parametrize("mapping, match", [
    ("0\tanger\n1\tjoy\n1\tsadness\n", r"mapping.txt:3: label id 1 is given twice \(lines 2 and 3\)"),
    ("0\tanger\n1\tjoy\n2\tJoy\n", r"mapping.txt:3: label name 'Joy' is also id 1's \(line 2\)"),
])
def test_a_mapping_that_gives_an_id_or_a_name_twice_names_both_lines(data, mapping, match):
    """A repeated id silently re-named a label; a repeated name made a label's negative pair
    the same text as its positive."""
    (data / "tweeteval/emotion/mapping.txt").write_text(mapping)
    with pytest.raises(ValidationError, match=match):
        T.load_split(data, "train")
