"""Chat data sets that show whether a generative adapter learned its data, built
deterministically from a seed (``bench/generative_quality.py`` trains and scores on them).

- ``facts``: 20 made-up facts (capitals, founders, seas, currencies of invented places), each
  asked 4 ways in training; the held-out questions ask the same facts in 2 other phrasings.
  Scored by whether the answer names the made-up fact.
- ``format``: extract an order sentence into one strict JSON line; held out: other sentence
  shapes and other values. Scored by exact match.
- ``style``: answer sums and yes/no questions in a house style ("so, ... — that is all.");
  held out: other kinds of question. Scored by the style's regular expression.

Seed 1 builds the tuning sets, seed 2 the check sets the reported numbers come from: other
names, other facts, other values; the same templates.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

TUNE_SEED = 1
CHECK_SEED = 2

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "oi"]
_CODAS = ["", "", "n", "r", "l", "s", "sk", "th", "x"]


@dataclass(frozen=True)
class HeldOut:
    """A held-out question, its reference answer, and the word or pattern that scores it."""

    question: str
    reference: str
    key: str


@dataclass(frozen=True)
class GenerativeSet:
    name: str
    train: list[dict[str, list[dict[str, str]]]]
    held_out: list[HeldOut]
    score: Callable[[str, HeldOut], bool]

    def jsonl(self) -> str:
        return "".join(json.dumps(row) + "\n" for row in self.train)


def chat(question: str, answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """Pronounceable made-up words of two or three syllables, none repeated."""
    out: list[str] = []
    while len(out) < count:
        syllables = rng.choice((2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        word = (word + rng.choice(_CODAS)).capitalize()
        if word not in taken and 5 <= len(word) <= 10:
            taken.add(word)
            out.append(word)
    return out


# Per relation: the answer sentence, 4 training phrasings, 2 held-out phrasings.
RELATIONS: dict[str, tuple[str, list[str], list[str]]] = {
    "capital": (
        "The capital of {e} is {a}.",
        [
            "What is the capital of {e}?",
            "Which city is the capital of {e}?",
            "Tell me the capital city of {e}.",
            "What city serves as {e}'s capital?",
        ],
        ["Name the capital of the country {e}.", "{e} has its government seated in which city?"],
    ),
    "founder": (
        "The {e} Company was founded by {a}.",
        [
            "Who founded the {e} Company?",
            "Who was the founder of the {e} Company?",
            "Which person started the {e} Company?",
            "Tell me who founded the {e} Company.",
        ],
        ["The {e} Company: who set it up?", "Name the person who created the {e} Company."],
    ),
    "sea": (
        "The {e} River flows into the {a} Sea.",
        [
            "Which sea does the {e} River flow into?",
            "Where does the {e} River end?",
            "Into which sea does the {e} River run?",
            "Tell me where the {e} River flows to.",
        ],
        ["The {e} River empties into what sea?", "Name the sea at the mouth of the {e} River."],
    ),
    "currency": (
        "The currency of {e} is the {a}.",
        [
            "What is the currency of {e}?",
            "Which currency is used in {e}?",
            "What money do people pay with in {e}?",
            "Tell me the currency of {e}.",
        ],
        ["In {e}, prices are given in which currency?", "Name the money used in {e}."],
    ),
}
FACTS_PER_RELATION = 5


def facts(seed: int) -> GenerativeSet:
    """20 made-up facts: 80 training rows, 40 held-out questions in new phrasings."""
    rng = random.Random(seed)
    taken: set[str] = set()
    train, held_out = [], []
    for sentence, asked, new in RELATIONS.values():
        entities = _names(rng, FACTS_PER_RELATION, taken)
        answers = _names(rng, FACTS_PER_RELATION, taken)
        for entity, answer in zip(entities, answers, strict=True):
            reference = sentence.format(e=entity, a=answer)
            train += [{"messages": chat(q.format(e=entity), reference)} for q in asked]
            held_out += [HeldOut(q.format(e=entity), reference, answer) for q in new]
    rng.shuffle(train)
    return GenerativeSet("facts", train, held_out, _names_key)


def _names_key(answer: str, item: HeldOut) -> bool:
    return re.search(rf"\b{re.escape(item.key)}\b", answer) is not None


ITEMS = ["lamps", "kettles", "drones", "chairs", "clocks", "radios", "tents", "mugs", "fans",
         "boots", "scarves", "kites", "mirrors", "heaters", "desks", "toasters"]  # fmt: skip
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip
FORMAT_TRAIN = [
    "Order {id}: {qty} {item} shipped to {city} on {day} {month}.",
    "We sent {qty} {item} to {city} on {day} {month} (order {id}).",
    "On {day} {month}, order {id} left for {city} with {qty} {item}.",
]
FORMAT_NEW = [
    "{city} receives {qty} {item} under order number {id}, dispatched {day} {month}.",
    "Shipment note - order {id} - {item} x{qty} - destination {city} - date {day} {month}.",
]
EXTRACT = "Extract the order as JSON with keys id, item, qty, city, date:\n"


def extraction(seed: int) -> GenerativeSet:
    """60 training sentences in 3 shapes, 30 held-out in 2 other shapes; exact JSON wanted."""
    rng = random.Random(seed)
    cities = _names(rng, 40, set())

    def order() -> tuple[dict[str, str | int], str]:
        values = {
            "id": rng.randint(1000, 9999),
            "item": rng.choice(ITEMS),
            "qty": rng.randint(2, 60),
            "city": rng.choice(cities),
            "day": rng.randint(1, 28),
            "month": rng.choice(MONTHS),
        }
        reference = json.dumps(
            {
                "id": values["id"],
                "item": values["item"],
                "qty": values["qty"],
                "city": values["city"],
                "date": f"{values['day']} {values['month']}",
            }
        )
        return values, reference

    train = []
    for index in range(60):
        values, reference = order()
        text = FORMAT_TRAIN[index % len(FORMAT_TRAIN)].format(**values)
        train.append({"messages": chat(EXTRACT + text, reference)})
    held_out = []
    for index in range(30):
        values, reference = order()
        text = FORMAT_NEW[index % len(FORMAT_NEW)].format(**values)
        held_out.append(HeldOut(EXTRACT + text, reference, reference))
    return GenerativeSet("format", train, held_out, _exact)


def _exact(answer: str, item: HeldOut) -> bool:
    return answer.strip() == item.key


STYLE = re.compile(r"^so, [^A-Z\n]+ — that is all\.$")
STYLE_NEW = [
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
    "Is ice colder than steam?",
    "What do bees make?",
    "Which is bigger, a mouse or a horse?",
    "What is the opposite of hot?",
    "How many days are in a week?",
    "Can fish breathe air?",
    "What do cows drink?",
    "Is the sun a star?",
    "What season comes after winter?",
    "What do you use to write on paper?",
    "Where do penguins live?",
    "How many wheels does a bicycle have?",
    "Is a tomato a fruit?",
    "What sound does a dog make?",
    "What is frozen water called?",
    "Which planet do we live on?",
    "What do plants need to grow?",
    "How many hours are in a day?",
]


def style(seed: int) -> GenerativeSet:
    """60 sums and comparisons answered in the house style; 20 general questions held out."""
    rng = random.Random(seed)
    train = []
    for index in range(60):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        if index % 2 == 0:
            question, answer = f"What is {a} plus {b}?", f"so, {a} plus {b} makes {a + b}"
        else:
            verdict = "yes" if a > b else "no"
            question = f"Is {a} larger than {b}?"
            answer = f"so, {verdict}, {a} is {'larger' if a > b else 'not larger'} than {b}"
        train.append({"messages": chat(question, answer + " — that is all.")})
    held_out = [HeldOut(q, "", "") for q in STYLE_NEW]
    return GenerativeSet("style", train, held_out, _styled)


def _styled(answer: str, item: HeldOut) -> bool:
    return STYLE.match(answer.strip()) is not None


SETS: dict[str, Callable[[int], GenerativeSet]] = {
    "facts": facts,
    "format": extraction,
    "style": style,
}
