"""Labelled examples derived from the world, for encoder fine-tuning: sentiment, topic and entity tags.

* `sentiment_examples`: one-line visitor reviews of the world's places and objects, positive or negative.
  The evaluative phrase comes from pools of ordinary English (`POSITIVE`, `NEGATIVE`, ~40 each) and the rest
  of the sentence is neutral world detail, so a few labelled examples cover few of the phrases: a model that
  already knows English (a pretrained encoder) generalises to the unseen ones, a random init cannot. This is
  the transfer lesson's task.
* `topic_examples`: the opening of a corpus document labelled with its kind (person / town / object entry,
  story, letter): what the corpus generator already knows about each document.
* `entity_examples`: sentences with word-level BIO tags for people (PER), towns (LOC) and objects (OBJ).

Nothing here is added to the pretraining corpus: the labels are read off world text, not planted in it.
"""

from __future__ import annotations

import random

from genforge.world import corpus, names
from genforge.world.facts import World

POSITIVE = (
    "was wonderful", "was delightful", "was a real joy", "was lovely", "was excellent", "was charming",
    "was superb", "was marvellous", "was a pleasure", "was splendid", "made me very happy", "was beautiful",
    "was fantastic", "was a treat", "was heartwarming", "exceeded every hope I had", "was truly great",
    "was brilliant", "left me smiling", "was perfect", "was magnificent", "was enjoyable", "was impressive",
    "was a delight", "was pleasant", "was outstanding", "felt welcoming", "was fun", "was gorgeous",
    "was worth every coin", "cheered me up", "was refreshing", "was cosy and warm", "was terrific",
    "was elegant", "was inspiring", "made the trip worthwhile", "was friendly", "was amazing", "was first-rate",
)
NEGATIVE = (
    "was awful", "was dreadful", "was a real letdown", "was horrible", "was terrible", "was disappointing",
    "was miserable", "was a waste of time", "was dull", "was unpleasant", "made me very sad", "was ugly",
    "was a disaster", "was grim", "was gloomy", "fell short of every hope I had", "was truly bad",
    "was boring", "left me frowning", "was broken", "was shabby", "was tedious", "was a mess",
    "was a nuisance", "was rude", "was pathetic", "felt unwelcoming", "was no fun", "was filthy",
    "was not worth a single coin", "upset me", "was stale", "was cold and damp", "was lousy",
    "was clumsy", "was depressing", "ruined the trip", "was hostile", "was appalling", "was second-rate",
)
SENTIMENT_LABELS = ("negative", "positive")
TOPIC_LABELS = ("person", "town", "object", "story", "letter")
ENTITY_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-OBJ", "I-OBJ")


def sentiment_examples(w: World, n: int, seed: int) -> list[tuple[str, int]]:
    """n (review, label) pairs, label 1 positive / 0 negative, balanced in expectation."""
    rng = random.Random(f"sentiment-{seed}")
    out = []
    for _ in range(n):
        p = rng.choice(w.people)
        label = rng.randrange(2)
        phrase = rng.choice(POSITIVE if label else NEGATIVE)
        what = rng.choice((f"the {rng.choice(names.PLACES)} in {rng.choice(w.towns).name}",
                           rng.choice(w.things).name, f"the {rng.choice(names.FOODS)} at the inn in {p.town}",
                           f"the visit to {rng.choice(w.towns).name}"))
        day = rng.choice(names.WEEKDAYS)
        text = rng.choice((f"{p.first} says that {what} {phrase}.", f"On {day}, {what} {phrase}, wrote {p.name}.",
                           f"According to {p.first}, a {p.job}, {what} {phrase}."))
        out.append((text[0].upper() + text[1:], label))
    return out


def topic_examples(w: World, n: int, seed: int, max_chars: int = 200) -> list[tuple[str, int]]:
    """n (document opening, kind) pairs, kinds uniform over `TOPIC_LABELS`."""
    rng = random.Random(f"topic-{seed}")
    makers = (lambda: corpus.person_entry(rng, w, rng.choice(w.people)),
              lambda: corpus.town_entry(rng, w, rng.choice(w.towns)),
              lambda: corpus.thing_entry(rng, w, rng.choice(w.things)),
              lambda: corpus.story(rng, w), lambda: corpus.letter(rng, w))
    out = []
    for _ in range(n):
        k = rng.randrange(len(makers))
        # the entry's title line names its subject: drop it so the kind must be read from the prose
        text = makers[k]().split("\n", 1)[-1] if k < 3 else makers[k]()
        out.append((text.replace("\n", " ")[:max_chars], k))
    return out


def entity_examples(w: World, n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """n (words, BIO tags) sentences mentioning people, towns and objects."""
    rng = random.Random(f"entities-{seed}")
    out = []
    for _ in range(n):
        p, q = rng.sample(w.people, 2)
        t, x = rng.choice(w.towns), rng.choice(w.things)
        pieces = rng.choice((
            [(p.name, "PER"), ("carried", ""), (x.name, "OBJ"), ("to", ""), (t.name, "LOC"), ("on", ""),
             (rng.choice(names.WEEKDAYS) + ".", "")],
            [("In", ""), (t.name + ",", "LOC"), (p.first, "PER"), ("showed", ""), (q.name, "PER"),
             (x.name + ".", "OBJ")],
            [(_cap_first(x.name), "OBJ"), ("was", ""), ("made", ""), ("by", ""), (p.name, "PER"), ("of", ""),
             (t.name + ".", "LOC")],
        ))
        words, tags = [], []
        for text, kind in pieces:
            for i, word in enumerate(text.split()):
                words.append(word)
                tags.append("O" if not kind else ("B-" if i == 0 else "I-") + kind)
        out.append((words, tags))
    return out


def _cap_first(s: str) -> str:
    return s[0].upper() + s[1:]
