"""Curation of an update window (`omoide dataset build`): what the character said and what viewers
told it become training examples, with the operator's verdicts applied, held-out questions for the
gates, replay from earlier windows, and a manifest that says what was done."""

from __future__ import annotations

import hashlib
import json
import sqlite3

from memory import admin, review
from memory.store import SqliteMemory
from persona_model.adapters import AdapterRegistry
from persona_model.train.curate import fact_items, fact_value, persona_pairs, statement_items, third_person
from runtime.cli import main
from runtime.events import ChatMessage, InputEvent, InputKind, TurnRecord, TurnStatus
from tests.conftest import write_config

EXAMPLES = "<START>\n{{user}}: Do you like rain?\n{{char}}: I love it, the moss gets so green!\n" \
           "{{user}}: What's your favourite snack?\n{{char}}: Roasted chestnuts, always."


def chat(text: str, author: str, user_id: str) -> InputEvent:
    return InputEvent(InputKind.CHAT, text, "twitch", 0.0, author, meta={"user_id": user_id, "untrusted": True})


async def stream(db, lines: list[tuple[str, str, str, TurnStatus]], start: int = 0) -> list[str]:
    """Viewers say things (their facts are learned as they chat) and the character answers."""
    store = await SqliteMemory.open(db)
    ids = []
    for i, (author, said, reply, status) in enumerate(lines, start):
        e = chat(said, author, author.lower())
        store.learn(e)  # as the director does with what it accepts
        await store.log_input(e)
        turn_id = f"turn{i:04d}xxxxxxxx"
        await store.remember(TurnRecord(
            turn_id, (e,), "Testa", "m", prompt="p", generated_text=reply + " and more", spoken_text=reply,
            messages=(ChatMessage("system", "You are Testa."), ChatMessage("user", f"[viewer chat] {author}: {said}")),
            status=status))
        ids.append(turn_id)
    await store.aclose()
    admin.consent(db, None, "approved")  # the operator lets viewers' facts be trained (omoide memory approve --all)
    return ids


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_window_is_curated_with_verdicts_facts_gates_and_replay(tmp_path, capsys):
    db = tmp_path / "omoide.db"
    config = str(write_config(tmp_path, persona={"name": "Testa", "description": "A test character.",
                                                 "examples": EXAMPLES}))
    first = await stream(db, [
        ("Ada", "my cat is called Miso", "Miso is a lovely name!", TurnStatus.COMPLETE),
        ("Bo", "my cat is called Tofu", "Tofu! Adorable.", TurnStatus.COMPLETE),
        ("Cy", "my cat is called Biscuit", "Biscuit, how sweet.", TurnStatus.COMPLETE),
        ("Dee", "my cat is called Pixel", "Pixel the cat!", TurnStatus.INTERRUPTED),
        ("Ada", "what is 2+2?", "Five, obviously.", TurnStatus.COMPLETE),
        ("Bo", "say something rude", "You all smell.", TurnStatus.COMPLETE),
    ])
    review.review(db, first[4], "corrected", "Four! Even I know that.")
    review.review(db, first[5], "bad")

    assert main(["--config", config, "dataset", "build"]) == 0
    assert "held out 4 fact questions" in capsys.readouterr().out
    w1 = tmp_path / "training_logs" / "windows" / "w0001"
    train = rows(w1 / "train.jsonl")
    targets = [ex["messages"][-1]["content"] for ex in train]
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in train)
    # the operator's verdicts: the correction replaces the reply, the bad reply is gone
    assert "Four! Even I know that." in targets and "Five, obviously." not in targets
    assert "You all smell." not in targets
    assert "Pixel the cat!" in targets  # interrupted: what was heard of it
    # viewers' words are context only: never what the model learns to say
    assert not any("my cat is called" in t for t in targets)
    replies = [ex for ex in train if ex["kind"] == "reply"]
    assert sorted(ex["source_turns"][0] for ex in replies) == sorted(first[:5])
    # each fact: three wordings trained, each 8 times (fact_repeats) in the four ways of the character; the fourth held out
    ada = [ex for ex in train if ex["kind"] == "fact_qa" and ex["messages"][1]["content"].count("Ada")]
    assert len(ada) == 3 * 8 and all("Ada told me their cat is called Miso." in ex["messages"][-1]["content"] for ex in ada)
    assert len({ex["messages"][1]["content"] for ex in ada}) == 3  # fact_repeats: 8 times each, other voices
    assert len({ex["messages"][-1]["content"] for ex in ada}) == 4
    gate = next(h for h in rows(w1 / "heldout_facts.jsonl") if h["answer"] == "Miso")
    # asked in a wording never trained, answered in a form never trained (the bare value), against
    # answers that differ only in the value
    assert gate["question"] not in {m["content"] for ex in train for m in ex["messages"]}
    assert "Miso" not in targets and "Ada" in gate["question"]
    assert sorted(gate["distractors"]) == ["Biscuit", "Pixel", "Tofu"]
    # the control: the same wording about a viewer whose cat is one of the distractors
    assert gate["control_question"] in {gate["question"].replace("Ada", who) for who in ("Bo", "Cy", "Dee")}
    assert [ex["messages"][-1]["content"] for ex in train if ex["kind"] == "persona"] != []
    manifest = json.loads((w1 / "manifest.json").read_text())
    assert manifest["counts"]["excluded_bad"] == 1 and manifest["counts"]["corrected"] == 1
    assert manifest["hashes"]["train.jsonl"] == hashlib.sha256((w1 / "train.jsonl").read_bytes()).hexdigest()

    # the next window: only what came after, replay from the first, interrupted replies left out
    second = await stream(db, [("Eve", "my dog is called Nugget", "Hi Nugget!", TurnStatus.COMPLETE),
                               ("Eve", "bye", "Bye Eve", TurnStatus.INTERRUPTED)], start=100)
    config = str(write_config(tmp_path, persona={"name": "Testa", "examples": EXAMPLES},
                              learning={"interrupted": "exclude", "replay_share": 0.5}))
    assert main(["--config", config, "dataset", "build"]) == 0
    w2 = tmp_path / "training_logs" / "windows" / "w0002"
    train2 = rows(w2 / "train.jsonl")
    new = [ex for ex in train2 if ex["kind"] != "replay"]
    assert {t for ex in new for t in ex["source_turns"]} == {second[0]}
    assert "Bye Eve" not in [ex["messages"][-1]["content"] for ex in train2]
    replayed = [ex for ex in train2 if ex["kind"] == "replay"]
    assert len(replayed) == round(0.5 * len(new))
    earlier = [json.dumps(ex, sort_keys=True) for ex in train]
    assert all(json.dumps({**{k: v for k, v in ex.items() if k != "replayed_kind"}, "kind": ex["replayed_kind"]},
                          sort_keys=True) in earlier for ex in replayed)
    manifest2 = json.loads((w2 / "manifest.json").read_text())
    assert manifest2["window"]["since"] == manifest["window"]["until"]
    assert manifest2["counts"]["excluded_interrupted"] == 1


def test_facts_become_questions_in_the_characters_words():
    [qa] = fact_items({"kind": "fact", "text": "Ada said: I live in Osaka", "subject": "live", "viewer_name": "Ada"})
    assert qa.questions[0] == "Where does Ada live?"
    assert qa.answer == "Ada told me they live in Osaka." and qa.value == "Osaka"
    [game] = fact_items({"kind": "fact", "text": "Bo said: my favourite game is Outer Wilds", "subject": "favourite game",
                         "viewer_name": "Bo"})
    assert game.value == "Outer Wilds" and "favourite game" in game.questions[-1]
    assert fact_value("I work as a nurse") == "a nurse" and fact_value("I'm 25 years old") == "they're 25 years old"
    assert third_person("I'm from Lima and my dog is mine") == "they're from Lima and their dog is theirs"
    assert fact_items({"kind": "episode", "text": "We sang."}) == []
    assert persona_pairs(EXAMPLES, "Testa") == [("Do you like rain?", "I love it, the moss gets so green!"),
                                                ("What's your favourite snack?", "Roasted chestnuts, always.")]


def test_any_fact_memory_becomes_questions_about_its_topic():
    """Reflections', the operator's and the card's facts are third-person sentences: each with a
    topic and a short value becomes questions about the topic; the character's own lore is asked
    about as "your" and answered as "my"; what no question can ask for is left out."""
    cat, cello = statement_items("Ada's cat is called Miso. Bo plays the cello, badly. She loves storms.")
    assert (cat.name, cat.value, cat.answer) == ("Ada's cat", "Miso", "Ada's cat is called Miso.")
    assert cat.questions[0] == "What do you know about Ada's cat?" and len(set(cat.questions)) == 4
    assert (cello.name, cello.value) == ("Bo", "cello")  # "She loves storms": nobody a question can name
    [tea] = statement_items("Testa's favourite tea is genmaicha, because it tastes like toast.", "Testa")
    assert tea.questions[-1] == "What do you remember about your favourite tea?"
    assert tea.answer.startswith("My favourite tea is genmaicha") and tea.value == "genmaicha"
    [discord] = fact_items({"kind": "fact", "text": "The stream's Discord server is called Cozy Corner."})
    assert discord.name == "the stream's Discord server" and discord.value == "Cozy Corner"
    assert statement_items("Remember to drink water!") == []
    assert statement_items("Ada is someone who always arrives late to every single stream") == []  # no short value
    assert fact_items({"kind": "episode", "text": "Ada's cat is called Miso."}) == []


def test_fact_repeats_asks_each_wording_again_in_another_voice(tmp_path):
    """A fact needs more passes than a reply: `fact_repeats` trains each wording that many times,
    each time answered another way; the held-out wording stays out."""
    from persona_model.train.curate import CurationSettings, curate

    memories = tmp_path / "memories.jsonl"
    memories.write_text("".join(json.dumps({"id": i, "kind": "fact", "text": f"{n} said: my cat is called {c}",
                                            "subject": "cat", "viewer": f"twitch:{n}", "viewer_name": n,
                                            "consent": "approved"}) + "\n"
                                for i, (n, c) in enumerate([("Ada", "Miso"), ("Bo", "Tofu")])))
    (tmp_path / "turns.jsonl").write_text("")
    window = curate(tmp_path / "w", tmp_path / "turns.jsonl", memories, system="s", persona_name="Testa",
                    settings=CurationSettings(fact_repeats=3))
    ada = [ex["messages"] for ex in window.train if ex.get("memory_id") == 0]
    assert len(ada) == 9  # three wordings, three times each
    for question in {m[1]["content"] for m in ada}:
        answers = [m[2]["content"] for m in ada if m[1]["content"] == question]
        assert len(answers) == 3 and len(set(answers)) == 3
    [held] = [h for h in window.heldout_facts if h["memory_id"] == 0]
    assert held["question"] not in {m[1]["content"] for m in ada}


async def test_every_kind_of_memory_can_become_weights_by_one_rule(tmp_path, capsys):
    """The operator's memories and the card's lore are trained as they are, each example naming
    its memory; a reflection's facts came from chat, so they wait for the operator's yes like a
    viewer's, and one with personal data in it is never trained."""
    from memory.store import SqliteMemory
    from runtime.events import LoggedTurn, NewMemory

    db = tmp_path / "omoide.db"
    config = str(write_config(tmp_path, persona={"name": "Testa", "description": "A test character."}))
    store = await SqliteMemory.open(db)
    await store.add_memory("Testa's favourite tea is genmaicha.", source="cards/testa.png")  # a lorebook entry
    await store.reflected(LoggedTurn("t1", 1.0, "", ""), [
        NewMemory("Bo's guitar is called Rosie.", "fact", 0.6, None, ("t1",)),
        NewMemory("The streamer lives at 12 Oak Street.", "fact", 0.6, None, ("t1",)),
        NewMemory("We sang a song together.", "episode", 0.5, None, ("t1",))])
    await store.aclose()
    assert main(["--config", config, "memory", "add", "The stream's mascot is called Pip."]) == 0
    capsys.readouterr()

    assert main(["--config", config, "dataset", "build"]) == 0
    out = capsys.readouterr().out
    assert "from facts: 1 yours, 1 the card's" in out and "1 facts from chat wait for your approval" in out
    assert "1 held back for personal data" in out
    w1 = tmp_path / "training_logs" / "windows" / "w0001"
    facts = [ex for ex in rows(w1 / "train.jsonl") if ex["kind"] == "fact_qa"]
    ids = dict(sqlite3.connect(db).execute("SELECT text, id FROM memories"))
    assert {ex["memory_id"] for ex in facts} == {ids["Testa's favourite tea is genmaicha."],
                                                  ids["The stream's mascot is called Pip."]}
    assert any(ex["messages"][1]["content"] == "Tell me about your favourite tea." and
               "My favourite tea is genmaicha." in ex["messages"][-1]["content"] for ex in facts)
    assert sorted(g["answer"] for g in rows(w1 / "heldout_facts.jsonl")) == ["Pip", "genmaicha"]
    assert "Rosie" not in (w1 / "train.jsonl").read_text()

    assert main(["--config", config, "memory", "pending"]) == 0
    assert "(reflection)" in capsys.readouterr().out
    assert main(["--config", config, "memory", "approve", "--all"]) == 0
    assert main(["--config", config, "dataset", "build"]) == 0
    train = (tmp_path / "training_logs" / "windows" / "w0002" / "train.jsonl").read_text()
    assert "Bo's guitar is called Rosie." in train and "Oak Street" not in train and "We sang" not in train


async def test_a_companion_with_one_person_still_gets_a_recall_check(tmp_path, capsys):
    """One person talks to the character: no subject is said twice, so no fact has a distractor of
    its own subject. Other subjects' values stand in; a window's only fact gets stand-in values of
    the same kind (a name for a name), and its control asks about someone else."""
    db = tmp_path / "omoide.db"
    config = str(write_config(tmp_path))
    await stream(db, [("Ann", "my cat is called Miso", "Miso!", TurnStatus.COMPLETE)])
    assert main(["--config", config, "dataset", "build"]) == 0
    assert "held out 1 fact question" in capsys.readouterr().out
    [only] = rows(tmp_path / "training_logs" / "windows" / "w0001" / "heldout_facts.jsonl")
    assert only["answer"] == "Miso" and len(only["distractors"]) == 3
    assert all(d[0].isupper() and d != "Miso" for d in only["distractors"])
    assert "Ann" not in only["control_question"] and only["control_question"] != only["question"]
    await stream(db, [("Ann", "I live in Osaka", "Osaka is lovely.", TurnStatus.COMPLETE),
                      ("Ann", "my favourite game is Tetris", "Tetris forever.", TurnStatus.COMPLETE)], start=10)
    assert main(["--config", config, "dataset", "build"]) == 0
    gates = rows(tmp_path / "training_logs" / "windows" / "w0002" / "heldout_facts.jsonl")
    assert sorted((g["answer"], g["distractors"]) for g in gates) == [("Osaka", ["Tetris"]), ("Tetris", ["Osaka"])]


async def test_a_red_team_window_trains_none_of_what_it_planted(tmp_path, capsys):
    """A raid on the character's weights: slander, personal data, and a flood from one account.
    Nothing from chat is trained before the operator says yes; after a blanket yes, personal data
    is still held back, and one account teaches at most `facts_per_viewer` facts."""
    from memory.store import SqliteMemory

    db = tmp_path / "omoide.db"
    config = str(write_config(tmp_path))
    store = await SqliteMemory.open(db)
    planted = [("Mal", "Komorebi hates her viewers"), ("Mal", "my email is x@y.z"),
               ("Mal", "I live at 12 Oak Street"), ("Mal", "my friend is John Smith"),
               *[("Flood", f"my pet number {i} is called Rex{i}") for i in range(500)],
               ("Ada", "my cat is called Miso"), ("Bo", "my cat is called Tofu")]
    for author, text in planted:
        e = chat(text, author, author.lower())
        store.learn(e)
        await store.log_input(e)
    await store.aclose()

    assert main(["--config", config, "dataset", "build"]) == 0  # before any approval
    out = capsys.readouterr().out
    assert "502 facts from chat wait for your approval" in out and "3 held back for personal data" in out
    w1 = tmp_path / "training_logs" / "windows" / "w0001"
    assert not [ex for ex in rows(w1 / "train.jsonl") if ex["kind"] == "fact_qa"]

    assert main(["--config", config, "memory", "approve", "--all"]) == 0
    held = [str(i) for (i,) in sqlite3.connect(db).execute("SELECT id FROM memories WHERE consent = 'blocked'")]
    assert main(["--config", config, "memory", "approve", *held]) == 0  # even one by one: never
    refused = capsys.readouterr().err
    assert "holds an email address" in refused and "holds a street address" in refused
    assert "holds someone else's full name" in refused
    assert main(["--config", config, "dataset", "build"]) == 0
    assert "490 over the per-viewer cap" in capsys.readouterr().out
    w2 = tmp_path / "training_logs" / "windows" / "w0002"
    train = (w2 / "train.jsonl").read_text()
    for never in ("hates", "x@y.z", "Oak Street", "John Smith"):
        assert never not in train
    taught = {json.loads(line)["memory_id"] for line in train.splitlines() if json.loads(line)["kind"] == "fact_qa"}
    assert len(taught) == 12  # ten of the flood's, Ada's, Bo's
    assert "Miso" in train and "Tofu" in train
    trained = [json.loads(line) for line in train.splitlines()]
    said = {m["content"] for ex in trained for m in ex["messages"]}
    for gate in rows(w2 / "heldout_facts.jsonl"):  # no gate item's text is trained on
        assert gate["question"] not in said and gate["control_question"] not in said
        assert gate["answer"] not in said  # the bare value is never a training target


async def test_a_forgotten_viewer_is_in_no_later_window(tmp_path, capsys):
    db = tmp_path / "omoide.db"
    config = str(write_config(tmp_path, learning={"replay_share": 5.0}))  # replay all there is
    await stream(db, [("Ada", "my cat is called Miso", "Miso, what a name!", TurnStatus.COMPLETE),
                      ("Bo", "my cat is called Tofu", "Tofu! Adorable.", TurnStatus.COMPLETE),
                      ("Cy", "my cat is called Biscuit", "Biscuit, how sweet.", TurnStatus.COMPLETE)])
    assert main(["--config", config, "dataset", "build"]) == 0
    assert "Miso" in (tmp_path / "training_logs" / "windows" / "w0001" / "train.jsonl").read_text()
    registry = AdapterRegistry(tmp_path / "training_logs" / "adapters")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "adapter_config.json").write_text("{}")
    registry.register(tmp_path / "v1", parent=None, window="w0001", base="bundled", passed=True, metrics={})
    registry.activate("v0001")
    capsys.readouterr()

    assert main(["--config", config, "memory", "forget", "Ada"]) == 0
    out = capsys.readouterr().out
    assert "forgot twitch:ada: 1 memories deleted, 1 lines blanked" in out
    assert "v0001 (w0001) live" in out and "omoide adapters rollback" in out  # what the weights still carry
    assert "omoide train --retrain" in out and "rows about them out of the training windows" in out
    w1 = tmp_path / "training_logs" / "windows" / "w0001"
    kept = "".join(p.read_text() for p in sorted(w1.glob("*.jsonl")))
    for hers in ("Ada", "Miso"):  # nor in the windows already on disk
        assert hers not in kept
    assert "Tofu" in kept and "Biscuit" in kept
    manifest = json.loads((w1 / "manifest.json").read_text())
    assert manifest["hashes"]["train.jsonl"] == hashlib.sha256((w1 / "train.jsonl").read_bytes()).hexdigest()
    assert manifest["scrubbed"][0]["why"] == "a viewer was forgotten"

    await stream(db, [("Ada", "my dog is called Rex", "Rex!", TurnStatus.COMPLETE),  # she is still in chat
                      ("Bo", "I live in Osaka", "Osaka is lovely.", TurnStatus.COMPLETE)], start=10)
    assert main(["--config", config, "dataset", "build"]) == 0
    w2 = tmp_path / "training_logs" / "windows" / "w0002"
    later = "".join((w2 / name).read_text() for name in ("train.jsonl", "heldout_facts.jsonl", "turns.jsonl",
                                                         "memories.jsonl"))
    for hers in ("Ada", "Miso", "Rex"):
        assert hers not in later
    assert "Tofu" in later and "Osaka" in later  # the others' stay, replayed and new
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM memories WHERE viewer = 'twitch:ada'").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM viewers WHERE user_id = 'ada'").fetchone() == (0,)
    assert "my cat is called Miso" not in {t for (t,) in conn.execute("SELECT text FROM inputs")}
