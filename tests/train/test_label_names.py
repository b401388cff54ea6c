"""A label task pairs a post with its label's name and a negative with another label's name: a name
that is empty, or that the model reads as another's, makes pairs that teach nothing or the opposite."""
import shutil

import pytest

from postemb_rt.train import data as D
from postemb_rt.train import tasks as T


@pytest.fixture
def data(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


@pytest.mark.parametrize("mapping,line", [
    ("0\t___\n1\t_fire_\n2\t_sun_\n", 1),  # underscores only: an empty name
    ("0\tlove\n1\t_\n2\tsun\n", 2),
])
def test_an_empty_label_name_is_refused_naming_file_and_line(data, mapping, line):
    (data / "tweeteval/emoji/mapping.txt").write_text(mapping)
    with pytest.raises(D.DataError, match=rf"emoji/mapping.txt:{line}: .*empty.*Fix: "):
        T.load_split(data, "train")


@pytest.mark.parametrize("names", [
    ("red  heart", "red heart"),  # spaces the tokenizer drops
    ("caf\u00e9", "cafe\u0301"),  # the same word, composed and decomposed
    ("Joy", "joy "),
])
def test_label_names_that_read_the_same_are_refused(data, names):
    (data / "tweeteval/emoji/mapping.txt").write_text(f"0\t{names[0]}\n1\t{names[1]}\n2\tsun\n")
    with pytest.raises(D.DataError, match=r"emoji/mapping.txt:2: label name .* is also id 0's"):
        T.load_split(data, "train")


def test_stance_folders_that_give_the_same_topic_are_refused(data):
    # "climate" is shown as "climate change" (SemEval's target): a folder of that name would be the same topic
    shutil.copytree(data / "tweeteval/stance/climate", data / "tweeteval/stance/climate change")
    with pytest.raises(D.DataError, match=r"stance.*'climate change'.*climate.*Fix: "):
        T.load_split(data, "train")


def test_distinct_names_with_unicode_and_numbers_are_kept(data):
    (data / "tweeteval/emoji/mapping.txt").write_text("0\t\u2764\ufe0f\t_red_heart_\n1\t\U0001f525\n2\t2\n")
    assert T.load_split(data, "train").emoji.names == ["red heart", "\U0001f525", "2"]


@pytest.mark.parametrize("given,fix", [("joy", "its id, 1"), ("Joy ", "its id, 1"), ("1_0", "an id 0..1"),
                                       ("1.0", "an id 0..1")])
def test_a_label_that_is_not_an_id_names_the_fix(data, given, fix):
    f = data / "tweeteval/emotion/train_labels.txt"
    lines = f.read_text().splitlines()
    lines[3] = given
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(D.DataError, match=rf"emotion/train_labels.txt:4: label must be an integer id.*"
                                          rf"Given: {given!r}.*Fix: .*{fix}"):
        T.load_split(data, "train")


def test_a_hidden_folder_in_stance_is_no_target(data):
    """Jupyter and Finder leave hidden folders (.ipynb_checkpoints) beside the data: not a stance target."""
    want = T.load_split(data, "train").topic
    (data / "tweeteval/stance/.ipynb_checkpoints").mkdir()
    got = T.load_split(data, "train").topic
    assert (got.names, got.texts, got.labels) == (want.names, want.texts, want.labels)
