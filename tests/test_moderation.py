from runtime.moderation import Moderator, Verdict


def test_blocked_phrases_match_whole_words_in_any_case_accent_or_spelling():
    m = Moderator(["badword", "bad phrase"], "skip")
    assert m.check("this has a BADWORD in it")[0] is Verdict.SKIP
    assert m.check("b4dw0rd sneaks")[0] is Verdict.SKIP
    assert m.check("bäd phrase, with accents")[0] is Verdict.SKIP
    assert m.check("a bad-phrase hyphenated")[0] is Verdict.SKIP
    assert m.check("badwording is another word")[0] is Verdict.SPEAK
    assert m.check("nothing to see")[0] is Verdict.SPEAK


def test_stop_action_and_empty_list():
    assert Moderator(["x y"], "stop").check("so x y then") == (Verdict.STOP, "x y")
    assert Moderator([], "skip").check("anything") == (Verdict.SPEAK, None)
