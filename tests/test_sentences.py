from runtime.sentences import SentenceCutter, split_tags


def cut(pieces, **kw):
    c = SentenceCutter("t", **kw)
    out = []
    for p in pieces:
        out += c.feed(p)
    return out + c.flush()


def texts(sentences):
    return [s.text for s in sentences]


def test_sentences_come_out_as_soon_as_they_end_across_token_boundaries():
    c = SentenceCutter("t", first_min_chars=1000)
    assert c.feed("Hello the") == []
    first = c.feed("re! How are")
    assert texts(first) == ["Hello there!"]
    assert texts(c.feed(" you? I'm")) == ["How are you?"]
    assert texts(c.flush()) == ["I'm"]
    assert [s.seq for s in first] == [0]


def test_decimals_abbreviations_and_initials_do_not_end_a_sentence():
    out = cut(["It costs 3.5 coins, said Dr. Smith to J. Doe. Next one."], first_min_chars=1000)
    assert texts(out) == ["It costs 3.5 coins, said Dr. Smith to J. Doe.", "Next one."]


def test_the_first_sentence_is_cut_early_at_a_clause_but_later_ones_are_not():
    text = ("Well, I think that this is a long opening clause, and it goes on, and on. "
            "Then a second sentence, with a comma, ends here.")
    out = cut([w + " " for w in text.split()], first_min_chars=30)  # streamed word by word
    assert texts(out)[0] == "Well, I think that this is a long opening clause,"
    assert texts(out)[1] == "and it goes on, and on."
    assert texts(out)[2] == "Then a second sentence, with a comma, ends here."


def test_a_run_without_punctuation_is_cut_at_a_space():
    out = cut(["word " * 100], max_chars=50)
    assert all(len(s.text) <= 50 for s in out)
    assert " ".join(texts(out)).split() == ["word"] * 100


def test_expression_tags_are_taken_out_and_attached_to_their_sentence():
    out = cut(["[happy] Hi chat! I lost [s", "ad] the game. [surprised]"], first_min_chars=1000)
    assert [(s.text, s.expressions) for s in out] == [
        ("Hi chat!", ("happy",)),
        ("I lost the game.", ("sad",)),
        ("", ("surprised",)),  # a tag after the last words still reaches the avatar
    ]


def test_tags_with_nothing_to_say_move_to_the_next_sentence():
    out = cut(["[thinking]\n", "Let me see."], first_min_chars=1000)
    assert [(s.text, s.expressions) for s in out] == [("Let me see.", ("thinking",))]


def test_split_tags():
    assert split_tags("[Happy] hi [very happy] there") == ("hi there", ("happy", "very_happy"))


def test_a_speaker_label_opening_the_reply_is_not_spoken():
    assert texts(cut(["Komorebi: Hello there! Nice to", " see you."])) == ["Hello there!", "Nice to see you."]
    assert [(s.text, s.expressions) for s in cut(["Pixel Fox: [happy] I love cake."])] == [
        ("I love cake.", ("happy",))]
    assert texts(cut(["tea_time: good night!"])) == ["good night!"]
    # only names, and only where the reply opens
    assert texts(cut(["Fun fact: turnips are brave. Mika: hi."], first_min_chars=1000)) == [
        "Fun fact: turnips are brave.", "Mika: hi."]


def test_whole_sentences_are_counted_apart_from_early_cuts():
    c = SentenceCutter("t", first_min_chars=20)
    words = "Well, this first sentence is cut early, at a comma. Two! Thr".split(" ")
    out = [s for w in words for s in c.feed(w if w == "Thr" else w + " ")]
    assert texts(out) == ["Well, this first sentence is cut early,", "at a comma.", "Two!"]
    assert c.ended == 2  # the early cut is half a sentence
    assert texts(c.feed("ee? ")) == ["Three?"] and c.ended == 3


def test_a_templates_placeholders_are_not_said_but_the_characters_expressions_are_shown():
    """What the bundled model said once: "Hey, my name is [name]. I'm playing a game called [game_name]." """
    out = cut(["[happy] Hi chat! My name is [name]. I play [game_name] all day. Bye [wave]!"],
              first_min_chars=1000, expressions=frozenset({"happy", "wave"}))
    assert [(s.text, s.expressions) for s in out] == [("Hi chat!", ("happy",)), ("Bye!", ("wave",))]
    c = SentenceCutter("t", expressions=frozenset({"happy"}))
    c.feed("My name is [name]. ")
    assert c.placeholders == ["My name is [name]."] and c.ended == 0
    # without a set of expressions, every bracketed word is one (for avatars that take any)
    assert texts(cut(["My name is [name]."])) == ["My name is."]
