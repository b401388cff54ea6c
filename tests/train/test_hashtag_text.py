"""A hashtag is removed from its anchor post in any spelling the tag was read from (else the anchor holds
its answer), and its words are split at case changes in any script, not only A-Z."""
import pytest

from postemb_rt.train import data as D
from postemb_rt.train.tasks import HashtagTask


@pytest.mark.parametrize("post", ["visiting #İstanbul today", "Grüße aus #München", "#ΣΟΦΙΑ rocks",
                                  "go #\u212aelvin"])
def test_every_tag_read_from_a_post_is_removed_from_it(post):
    for tag in D.hashtags(post):
        assert "#" not in D.strip_hashtag(post, tag), (post, tag)


def test_removing_a_tag_keeps_longer_tags_and_other_tags():
    post = "#love and #lovely #Love_you #LOVE"
    assert D.strip_hashtag(post, "love") == "and #lovely #Love_you"


@pytest.mark.parametrize("cased,words", [
    ("PopeFrancis", "Pope Francis"), ("HTMLParser", "HTML Parser"), ("iPhone12", "i Phone 12"),  # as before
    ("blessed", "blessed"), ("BLESSED", "blessed"),
    ("CaféCrème", "Café Crème"), ("São_Paulo", "São Paulo"), ("StraßeFrei", "Straße Frei"),
    ("ДобройНочи", "Доброй Ночи"),
    ("Cafe\u0301Cre\u0300me", "Cafe\u0301 Cre\u0300me"),  # decomposed accents
])
def test_hashtag_words_split_at_case_changes_in_any_script(cased, words):
    assert D.hashtag_words(cased.lower(), cased) == words


def test_the_hashtag_task_anchor_holds_no_tag_of_its_pair():
    posts = [f"day {i} in #İstanbul" for i in range(4)] + [f"night {i} #Ankara" for i in range(4)]
    task = HashtagTask(posts, 3)
    for i, (p, h) in enumerate(task.occ):
        assert "#" not in D.strip_hashtag(posts[p], h)
