"""Vellish, a rule-based toy language for the translation task (scored with BLEU).

English sentences come from a tiny grammar: `[time] the/a [adj] noun verb the/a [adj] noun`.
The translation is deterministic:

1. every word maps through `LEXICON` (nouns, adjectives, verb stems, time words);
2. adjectives follow their noun; "the" becomes the particle `la` before the noun; "a" disappears;
3. plural nouns take the suffix `-ek`; the object phrase is followed by the case particle `ko`;
4. the verb goes last (subject-object-verb) and takes `-ta` in the past tense;
5. a time word ("today", "yesterday") ends the sentence.

Example: "Yesterday the old baker saw a red cat." -> "la pana vet miro rus ko vidta jeri."
"""

from __future__ import annotations

import random

NOUNS = {
    "cat": "miro", "dog": "tavu", "baker": "pana", "farmer": "gresk", "river": "olun", "town": "vesk",
    "bird": "pipo", "child": "kelo", "teacher": "skolu", "boat": "navi", "house": "domi", "tree": "arbu",
    "fish": "pesk", "horse": "kava", "friend": "amik", "apple": "pomi", "book": "libu", "bell": "tinn",
    "goat": "kapri", "owl": "huhu", "lantern": "lumo", "miller": "mulo",
}
PLURALS = {"child": "children", "fish": "fish"}  # the rest add "s"
ADJECTIVES = {
    "old": "vet", "red": "rus", "big": "grom", "small": "min", "happy": "fel", "green": "verd", "quiet": "tis",
    "brave": "kur", "blue": "azu", "tired": "las", "young": "nov", "clever": "sag",
}
# base -> (third person singular, past, Vellish stem)
VERBS = {
    "see": ("sees", "saw", "vid"), "like": ("likes", "liked", "am"), "carry": ("carries", "carried", "port"),
    "follow": ("follows", "followed", "sekv"), "find": ("finds", "found", "trov"), "help": ("helps", "helped", "jut"),
    "call": ("calls", "called", "klam"), "watch": ("watches", "watched", "gard"), "feed": ("feeds", "fed", "nur"),
    "paint": ("paints", "painted", "pikt"),
}
TIMES = {"today": "oggi", "yesterday": "jeri"}
LEXICON = {**NOUNS, **ADJECTIVES, **{v: s for v, (_, _, s) in VERBS.items()}, **TIMES}
LANGUAGE = "Vellish"


def _np(rng: random.Random) -> tuple[str, str, bool]:
    """(English noun phrase, Vellish noun phrase, is_plural)."""
    noun = rng.choice(list(NOUNS))
    adj = rng.choice(list(ADJECTIVES)) if rng.random() < 0.6 else None
    plural = rng.random() < 0.3
    definite = plural or rng.random() < 0.6  # "a" cannot go with a plural
    en_noun = PLURALS.get(noun, noun + "s") if plural else noun
    article = "the" if definite else ("an" if (adj or noun)[0] in "aeiou" else "a")
    en = " ".join(x for x in (article, adj, en_noun) if x)
    ve = " ".join(x for x in ("la" if definite else None, NOUNS[noun] + ("ek" if plural else ""),
                              ADJECTIVES[adj] if adj else None) if x)
    return en, ve, plural


def sentence_pair(rng: random.Random) -> tuple[str, str, str]:
    """Return (English sentence, Vellish translation, a word-by-word gloss as the rationale)."""
    subj_en, subj_ve, subj_pl = _np(rng)
    obj_en, obj_ve, _ = _np(rng)
    verb = rng.choice(list(VERBS))
    third, past, stem = VERBS[verb]
    time = rng.choice([None, None, "today", "yesterday"])
    is_past = time == "yesterday" or (time is None and rng.random() < 0.3)
    en_verb = past if is_past else (verb if subj_pl else third)
    en = " ".join(x for x in (time, subj_en, en_verb, obj_en) if x)
    en = en[0].upper() + en[1:] + "."
    ve = " ".join(x for x in (subj_ve, obj_ve, "ko", stem + ("ta" if is_past else ""), TIMES[time] if time else None)
                  if x) + "."
    gloss = (f"Subject: {subj_en} -> {subj_ve}. Object: {obj_en} -> {obj_ve} ko. "
             f"Verb: {en_verb} -> {stem + ('ta' if is_past else '')}, placed last."
             + (f" Time: {time} -> {TIMES[time]}, at the end." if time else ""))
    return en, ve, gloss
