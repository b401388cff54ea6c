"""The hashtag task's negative pairs never carry a tag of their anchor (a false negative in the loss)."""
import numpy as np
import pytest

from postemb_rt.train import data as D
from postemb_rt.train.tasks import HashtagTask


def _tags(task, text):
    return {h for h in D.hashtags(text) if h in task.by_tag}


def _check_negatives(task, draws=400):
    rng = np.random.default_rng(0)
    for _ in range(draws):
        i = int(rng.integers(len(task)))
        p, h = task.occ[i]
        pair = task.negative(rng, i)
        assert pair.label == 0.0
        if pair.key[0] == "tag":
            assert pair.key[1] not in task.tags_of[p], pair
        else:
            q = pair.key[1]
            assert not task.tags_of[q] & task.tags_of[p], pair
            assert not _tags(task, pair.b) & task.tags_of[p], pair


def test_negative_post_never_shares_a_tag_when_most_posts_share_it():
    # 10 of 13 tagged posts carry #common: a post negative for their anchors is one of the 3 #third posts
    posts = [f"post {i} #common" + (" #other" if i % 2 else "") for i in range(10)]
    posts += [f"lone {i} #third" for i in range(3)]
    _check_negatives(HashtagTask(posts, 3))


def test_negative_when_no_post_is_apart_falls_back_to_a_tag():
    # every tagged post carries #common (none carries all three tags): no post is apart from any anchor
    posts = [f"post {i} #common" + (" #other" if i % 3 == 1 else " #third" if i % 3 == 2 else "") for i in range(12)]
    task = HashtagTask(posts, 3)
    _check_negatives(task)
    rng = np.random.default_rng(1)
    keys = {task.negative(rng, i).key for i in range(len(task)) for _ in range(5)}
    assert keys and all(k[0] == "tag" and k[1] != "common" for k in keys)


@pytest.mark.parametrize("posts", [
    [f"x {i} #solo" for i in range(6)],  # one tag: every negative would be a post with that very tag
    [f"x {i} #a #b" for i in range(6)] + [f"y {i} #a" for i in range(3)],  # a post carries every tag
])
def test_post_carrying_every_tag_is_refused_at_construction(posts):
    with pytest.raises(D.DataError, match=r"hashtag.*every hashtag.*Fix: "):
        HashtagTask(posts, 3)


def test_negatives_of_the_tiny_data_share_no_tag(tiny_data):
    from postemb_rt.train import tasks as T

    task = T.build_task(T.load_split(tiny_data, "train"), "hashtag")
    _check_negatives(task)


def test_data_without_frequent_hashtags_names_the_split_and_the_fix(tiny_data, tmp_path):
    import shutil

    from postemb_rt.train import tasks as T

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    for f in root.glob("tweeteval/*/train_text.txt"):
        f.write_text(f.read_text().replace("#", ""))
    for f in root.glob("tweeteval/stance/*/train_text.txt"):
        f.write_text(f.read_text().replace("#blessed", "").replace("#BeachLife", "").replace("#mondays", ""))
    with pytest.raises(D.DataError, match=r"`hashtag` task.*>= 5 posts of the train split.*Fix: .*drop 'hashtag'"):
        T.build_task(T.load_split(root, "train"), "hashtag")
