"""A generated recall set: viewers who state facts about themselves in chat, and later questions
about each fact worded differently (paraphrases, no template shared with the statement)."""

from __future__ import annotations

import random
from dataclasses import dataclass

_FIRST = ["alice", "bruno", "chika", "dmitri", "elena", "farid", "greta", "hiro", "ines", "jonas",
          "kaori", "lars", "mei", "nadia", "oscar", "priya", "quentin", "rosa", "sven", "tomo",
          "ulla", "viktor", "wren", "ximena", "yusuf", "zoe", "akira", "bea", "cyril", "dana"]
_SUFFIX = ["", "_gg", "chan", "42", "_live", "x", "99", "_art", "kun", "_plays", "_zz", "7"]

# (subject, statement, questions, values)
_TEMPLATES: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("pet", "my {pet} is called {v}", ("what's the name of {who}'s {pet}?", "what did {who} name their {pet}?"),
     ("Miso", "Tofu", "Biscuit", "Pixel", "Mochi", "Pepper", "Nugget", "Clover", "Yuzu", "Waffles")),
    ("from", "I'm from {v}", ("where does {who} come from?", "which city is {who}'s hometown?"),
     ("Osaka", "Lisbon", "Toronto", "Nairobi", "Krakow", "Lima", "Melbourne", "Oslo", "Seoul", "Austin")),
    ("job", "I work as a {v}", ("what does {who} do for a living?", "what is {who}'s job?"),
     ("nurse", "baker", "plumber", "teacher", "game developer", "pilot", "librarian", "chef", "lawyer", "vet")),
    ("game", "my favourite game is {v}", ("which game does {who} love most?", "what's {who}'s top video game?"),
     ("Celeste", "Hollow Knight", "Stardew Valley", "Minecraft", "Elden Ring", "Hades", "Tetris", "Portal 2",
      "Outer Wilds", "Terraria")),
    ("food", "I love eating {v}", ("what food does {who} enjoy?", "what's {who}'s favourite dish?"),
     ("ramen", "tacos", "pierogi", "sushi", "pancakes", "curry", "pho", "lasagna", "dumplings", "falafel")),
    ("instrument", "I play the {v}", ("which instrument can {who} play?", "does {who} play any music instrument?"),
     ("violin", "drums", "piano", "bass guitar", "cello", "trumpet", "ukulele", "flute", "harp", "saxophone")),
    ("sister", "my sister is a {v}", ("what does {who}'s sister work as?", "what is the job of {who}'s sister?"),
     ("dentist", "firefighter", "painter", "architect", "journalist", "florist", "mechanic", "pharmacist",
      "dancer", "farmer")),
    ("birthday", "my birthday is in {v}", ("when is {who}'s birthday?", "in which month was {who} born?"),
     ("January", "March", "April", "June", "July", "August", "September", "October", "November", "December")),
    ("language", "I'm learning {v}", ("which language is {who} studying?", "what language does {who} practise?"),
     ("Japanese", "Spanish", "Korean", "German", "Finnish", "Arabic", "Italian", "Polish", "Greek", "Swahili")),
    ("colour", "my favourite colour is {v}", ("what colour does {who} like best?", "which colour is {who}'s favourite?"),
     ("teal", "crimson", "mustard yellow", "lavender", "forest green", "navy blue", "coral", "black", "silver",
      "orange")),
    ("team", "I support {v}", ("which team is {who} a fan of?", "what club does {who} cheer for?"),
     ("Arsenal", "the Lakers", "Real Madrid", "the Yankees", "Celtic", "the Packers", "Juventus", "the Raptors",
      "Ajax", "Boca Juniors")),
    ("allergy", "I'm allergic to {v}", ("what is {who} allergic to?", "which allergy does {who} have?"),
     ("peanuts", "cats", "pollen", "shellfish", "bees", "dust", "strawberries", "penicillin", "gluten", "eggs")),
    ("weekend", "on weekends I go {v}", ("what does {who} do on weekends?", "how does {who} spend saturdays?"),
     ("hiking", "bouldering", "fishing", "skateboarding", "swimming", "cycling", "kayaking", "surfing",
      "to the cinema", "camping")),
    ("car", "my car is a {v}", ("what car does {who} drive?", "which vehicle does {who} own?"),
     ("red Honda Civic", "old Volvo", "Tesla", "tiny Fiat", "blue pickup truck", "Mini Cooper", "Subaru",
      "vintage Beetle", "Toyota Prius", "Jeep")),
]
_PETS = ("cat", "dog", "hamster", "parrot", "rabbit", "turtle")


@dataclass(frozen=True, slots=True)
class Case:
    viewer: str
    fact: str       # as the store keeps it: "<viewer> said: <statement>"
    question: str


def generate(viewers: int = 200, per_viewer: int = 10, seed: int = 7) -> list[Case]:
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < viewers:
        name = rng.choice(_FIRST) + rng.choice(_SUFFIX)
        name = name if name not in names else f"{name}{len(names)}"
        names.append(name)
    cases = []
    for who in names:
        for _subject, statement, questions, values in rng.sample(_TEMPLATES, per_viewer):
            pet = rng.choice(_PETS)
            said = statement.format(v=rng.choice(values), pet=pet)
            cases.append(Case(who, f"{who} said: {said}", rng.choice(questions).format(who=who, pet=pet)))
    return cases
