"""Environment knobs an SRE sets across a fleet: a bad value is refused with its name, the value given and
the fix, not a bare Python error."""
import pytest

from postemb_rt import fidelity
from postemb_rt.errors import ValidationError


@pytest.mark.parametrize("value", ["1k", "1.5", "-3", "0"])
def test_a_bad_postemb_fidelity_posts_names_the_variable_the_value_and_the_fix(monkeypatch, value):
    monkeypatch.setenv("POSTEMB_FIDELITY_POSTS", value)
    with pytest.raises(ValidationError, match=rf"POSTEMB_FIDELITY_POSTS.*Given: '{value}'.*Fix:"):
        fidelity.posts()


def test_postemb_fidelity_posts_takes_an_integer_with_spaces_around(monkeypatch):
    from postemb_rt.data import BUILTIN_POSTS, data_root

    monkeypatch.setenv("POSTEMB_FIDELITY_POSTS", " 12 ")
    texts, _ = fidelity.posts()
    assert len(texts) == (12 if data_root(required=False) is not None else len(BUILTIN_POSTS))
