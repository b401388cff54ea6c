"""postemb_rt.data: the shared data's one line reader (benchmark workloads, calibration, training data)."""
from __future__ import annotations

import pytest

from postemb_rt.data import read_lines
from postemb_rt.errors import ValidationError


def test_read_lines_is_one_post_per_newline(tmp_path):
    f = tmp_path / "posts.txt"
    # a BOM, CRLF, an empty line, and posts holding Unicode line breaks that str.splitlines cuts at
    f.write_bytes("\ufeffa\r\n\nb\u2028c\x0cd\x85e\nlast".encode())
    assert read_lines(f) == ["a", "", "b\u2028c\x0cd\x85e", "last"]
    f.write_bytes(b"x\n\n")
    assert read_lines(f) == ["x", ""]


def test_read_lines_names_the_line_that_is_not_utf8(tmp_path):
    f = tmp_path / "posts.txt"
    f.write_bytes(b"ok\nalso ok\nbad \xff byte\n")
    with pytest.raises(ValidationError, match=r"posts.txt:3: not UTF-8 .*Fix: save it as UTF-8"):
        read_lines(f)


def test_long_posts_of_an_empty_split_name_the_file_not_a_zero_division(tmp_path, monkeypatch):
    """An empty tweet file (a truncated copy of the shared data) made the fidelity check's long posts, and
    int8 calibration's, raise a bare ZeroDivisionError at load."""
    from postemb_rt.data import SHORT_POSTS, concatenated_posts, long_posts

    (tmp_path / SHORT_POSTS).parent.mkdir(parents=True)
    (tmp_path / SHORT_POSTS).write_text("")
    monkeypatch.setenv("POSTEMB_DATA", str(tmp_path))
    with pytest.raises(ValidationError, match=r"`tweets` must hold at least one post to concatenate. Given: 0"):
        concatenated_posts([], 3)
    with pytest.raises(ValidationError, match=rf"{SHORT_POSTS}.*holds no posts.*Fix:"):
        long_posts(3)
    assert concatenated_posts([], 0) == [] and len(concatenated_posts(["a b"], 2)) == 2
