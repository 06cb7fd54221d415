"""The pretraining corpus: plain English about the world, with planted junk, harmful and duplicate documents.

Clean documents come in eight kinds: encyclopedia entries for people, towns and objects, short stories,
letters between friends, arithmetic lessons ("7 plus 5 is 12."), worked solutions of the reasoning tasks
(a "mid-training" mix rendered from `world.reasoning`) and question-and-answer pages (`world.chat`).
Each sentence slot has several phrasings and sentence order varies, so two documents of one kind are not
near-duplicates of each other.

Planted documents (about 13 % of the total, each labelled in `corpus_labels.jsonl`) exercise the
cleaning stage:

* ``junk``: web boilerplate (cookie banners, "click here to subscribe"), symbol soup, keyboard mash,
  keyword stuffing and repeated-line spam;
* ``harmful``: tame placeholder "how-to" texts built from `world.harmful`;
* ``exact_dup``: a copy of a clean document, sometimes differing only in whitespace or Unicode form
  (NFD vs NFC), which is what "exact after normalisation" means;
* ``near_dup``: a clean document with a few words substituted, inserted or deleted, a number changed
  and/or a byline added (about 4 % of its words touched).

Duplicates always come *after* their source, as in a crawl that revisits a page later, so a
keep-the-first deduplicator removes the copy and keeps the original. No document contains a blank
line, so `corpus.txt` (blank-line separated) holds exactly the documents of `corpus.jsonl`.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from genforge.io import write_json, write_jsonl, write_text
from genforge.world import bias, canaries, geo, harmful, names, tom
from genforge.world.facts import Person, World

# Fractions of the clean-document count planted per label (together ~13 % of the final corpus).
PLANT_FRACTIONS = {"junk": 0.045, "harmful": 0.02, "exact_dup": 0.035, "near_dup": 0.05}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def _sentences_about(rng: random.Random, w: World, p: Person) -> list[str]:
    """Shuffled optional sentences about a person (used by entries and letters)."""
    pr, po, first = p.pronoun, p.possessive, p.first
    does, workplace = names.JOBS[p.job]
    town = w.town[p.town]
    out = [
        _pick(rng, f"As a {p.job}, {pr} {does}.", f"Most days {pr} can be found at the {workplace}, where {pr} {does}.",
              f"{_cap(pr)} {does} for a living.", f"{first} has worked as a {p.job} for many years."),
        _pick(rng, f"{_cap(pr)} has a {p.pet_kind} named {p.pet_name}.",
              f"{_cap(po)} {p.pet_kind}, {p.pet_name}, follows {first} everywhere.",
              f"{first} keeps a {p.pet_kind} called {p.pet_name}.",
              f"At home waits {p.pet_name}, {po} {p.pet_kind}."),
        _pick(rng, f"In {po} free time {pr} enjoys {p.hobby}.", f"{first} is fond of {p.hobby}.",
              f"{_cap(po)} favourite pastime is {p.hobby}."),
    ]
    if rng.random() < 0.6:
        out.append(_pick(rng, f"{_cap(po)} favourite food is {p.food}.", f"{first} says nothing beats {p.food}.",
                         f"Ask {first} about {p.food} and {pr} will talk for an hour."))
    if rng.random() < 0.4:
        out.append(_pick(rng, f"{_cap(po)} favourite colour is {p.colour}.",
                         f"{first} paints {po} front door {p.colour} every spring."))
    if p.friends and rng.random() < 0.8:
        fs = p.friends[:2]
        out.append(_pick(rng, f"{first} is friends with {' and '.join(fs)}.", f"{_cap(po)} closest friend is {fs[0]}.",
                         f"{first} often visits {fs[0]}."))
    if p.sibling and rng.random() < 0.8:
        kin = "sister" if w.person[p.sibling].pronoun == "she" else "brother"
        out.append(_pick(rng, f"{_cap(po)} {kin} is {p.sibling}.", f"{first} and {p.sibling} are siblings."))
    if rng.random() < 0.4:
        out.append(_pick(rng, f"{p.town} lies on the River {town.river}.",
                         f"From {po} window {first} can see the River {town.river}."))
    rng.shuffle(out)
    return out


def person_entry(rng: random.Random, w: World, p: Person) -> str:
    intro = _pick(rng, f"{p.name} is a {p.age}-year-old {p.job} who lives in {p.town}.",
                  f"{p.name}, a {p.job} from {p.town}, is {p.age} years old.",
                  f"Born in {p.born}, {p.name} works as a {p.job} in the town of {p.town}.",
                  f"{p.name} lives in {p.town}, where {p.pronoun} works as a {p.job}. {_cap(p.pronoun)} is {p.age}.")
    return f"{p.name}\n" + " ".join([intro, *_sentences_about(rng, w, p)])


def town_entry(rng: random.Random, w: World, t) -> str:
    residents = [p for p in w.people if p.town == t.name][:4]
    things = [x for x in w.things if x.town == t.name][:2]
    s = [
        _pick(rng, f"{t.name} is a town in {t.region} on the River {t.river}.",
              f"The town of {t.name} lies on the banks of the River {t.river}, in {t.region}.",
              f"{t.name} sits beside the River {t.river} in {t.region}."),
        _pick(rng, f"About {t.population} people live there.", f"Its population is about {t.population}.",
              f"Some {t.population} people call it home."),
        _pick(rng, f"It was founded in {t.founded}.", f"The first houses were built in {t.founded}.",
              f"Records show a settlement there since {t.founded}."),
        _pick(rng, f"The town is known for {t.known_for}.", f"Travellers come for {t.known_for}.",
              f"{t.name} is proud of {t.known_for}."),
    ]
    if residents:
        who = ", ".join(f"{p.name} the {p.job}" for p in residents)
        s.append(_pick(rng, f"Residents include {who}.", f"Among the people who live there are {who}."))
    for x in things:
        s.append(_pick(rng, f"{_cap(x.name)} is kept there.", f"Visitors can see {x.name} in {t.name}."))
    head, rest = s[0], s[1:]
    rng.shuffle(rest)
    return f"{t.name}\n" + " ".join([head, *rest])


def thing_entry(rng: random.Random, w: World, x) -> str:
    maker = w.person[x.maker]
    s = [
        _pick(rng, f"{_cap(x.name)} is a {x.material} {x.kind} made by {x.maker} in {x.year}.",
              f"{x.maker} made {x.name}, a {x.kind} of {x.material}, in {x.year}.",
              f"In {x.year}, {x.maker} finished {x.name}, a {x.material} {x.kind}."),
        _pick(rng, f"It is kept in {x.town}.", f"Today it stands in {x.town}.",
              f"It now belongs to the town of {x.town}."),
        _pick(rng, f"Its maker, {maker.first}, is a {maker.job} from {maker.town}.",
              f"{maker.first} {maker.last} lives in {maker.town} and works as a {maker.job}."),
    ]
    extra = [
        f"Children in {x.town} say it brings good luck.", f"It was repaired once, in {x.year + 31}.",
        f"Visitors to {x.town} often ask to see it.", f"On feast days it is carried through the streets of {x.town}.",
        f"A painting of it hangs in the {rng.choice(names.PLACES)}.",
        f"It is polished every {rng.choice(names.WEEKDAYS)}.",
    ]
    s += rng.sample(extra, k=rng.randint(1, 3))
    return f"{_cap(x.name)}\n" + " ".join(s)


def story(rng: random.Random, w: World) -> str:
    """A short story: slots in a fixed order, each with several phrasings, some slots optional."""
    p = rng.choice(w.people)
    f = w.person[rng.choice(p.friends)] if p.friends else rng.choice(w.people)
    t, day, month = w.town[p.town], rng.choice(names.WEEKDAYS), rng.choice(names.MONTHS)
    place, place2 = rng.sample(names.PLACES, 2)
    weather = _pick(rng, "The sky was grey and a cold wind blew.", f"It was a warm {month} day.",
                    "Rain had fallen all night and the lanes were muddy.", "The morning was clear and still.",
                    f"Snow lay on the roofs of {p.town}.", "Mist hung low over the water.")
    kind = rng.randrange(5)
    if kind == 0:
        x, y = rng.randint(2, 40), rng.choice(names.ITEMS)
        slots = [
            (f"One {day} morning, {p.first}'s {p.pet_kind} {p.pet_name} went missing.",
             f"On {day}, {p.name} woke up to find that {p.pet_name} the {p.pet_kind} was gone.",
             f"In {month}, {p.name} of {p.town} lost {p.possessive} {p.pet_kind}, {p.pet_name}."),
            (weather,),
            (f"{p.first} searched the {place} and the {place2}.",
             f"{_cap(p.pronoun)} looked behind the {place} and asked everyone near the {place2}.",
             f"First {p.pronoun} tried the {place}, then the {place2}."),
            (f"Nobody in {p.town} had seen a {p.pet_kind}.", "The baker shook her head and the miller shrugged.",
             f"A boy near the {place2} said he had seen something small running east."),
            (f"{p.first} left a trail of {y} in case {p.pet_name} was hungry.",
             f"{p.first} called until {p.possessive} voice was hoarse.", ""),
            (f"At last {f.first} found {p.pet_name} asleep by the River {t.river}.",
             f"It was {f.name} who spotted {p.pet_name} on the bank of the River {t.river}.",
             f"After {x} hours, {f.first} heard a noise under the bridge over the River {t.river}."),
            (f"That evening they shared {p.food} to celebrate.",
             f"{p.first} thanked {f.first} with a plate of {p.food}.",
             f"{p.pet_name} has not wandered off since."),
        ]
    elif kind == 1:
        t2 = w.town[f.town]
        slots = [
            (f"{p.name} set off from {p.town} to visit {f.name} in {f.town}.",
             f"On a bright {day}, {p.first} walked all the way to {f.town} to see {f.first}.",
             f"{p.name} had not seen {f.first} since {month}, so {p.pronoun} took the cart to {f.town}."),
            (weather, ""),
            (f"The road followed the River {t2.river} for most of the way.",
             f"{_cap(p.pronoun)} crossed the River {t2.river} on the old ferry.",
             f"Halfway there, {p.first} stopped to rest by the River {t2.river}."),
            (f"{f.first} was waiting at the {place}.", f"{f.first} had baked {f.food} for the visit.",
             f"{f.first}'s {f.pet_kind} ran out to greet {p.first} at the gate."),
            (f"They spent the afternoon {f.hobby}.", f"After lunch they tried {p.hobby} together.",
             "They talked about the old days until the tea went cold."),
            (f"{f.first} showed {p.first} the new {place2}.", ""),
            (f"When the sun went down, {p.first} went home happy.", f"{p.first} promised to come back soon.",
             f"It was dark by the time {p.first} reached {p.town} again."),
        ]
    elif kind == 2:
        n, item = rng.randint(3, 60), rng.choice(names.ITEMS)
        slots = [
            (f"It was market day in {p.town}.", f"Every {day} the market in {p.town} fills with stalls.",
             f"The {month} market in {p.town} was the busiest of the year."),
            (f"{p.name} the {p.job} brought {n} {item} to sell.", f"{p.first} carried a basket of {n} {item}.",
             f"{p.name} set up a table with {n} {item} on it."),
            (weather, ""),
            (f"{f.first} bought the first {rng.randint(1, n)} {item} of the day.",
             "An old man haggled over the price for an hour.", f"A girl asked whether the {item} were fresh."),
            (f"The square smelled of {rng.choice(names.FOODS)}.",
             f"A fiddler played near the {place} and children danced."),
            (f"By noon {p.pronoun} had sold all but {rng.randint(1, n)} of them.",
             f"By evening only {rng.randint(1, n)} {item} were left.", ""),
            (f"On the way home {p.first} stopped at the {place2}.", f"{p.first} counted {p.possessive} coins twice.",
             f"{p.first} gave the last {item} to {f.first}."),
        ]
    elif kind == 3:
        x = rng.choice(w.things)
        slots = [
            (f"One winter {x.name} in {x.town} stopped working.",
             f"Nobody knew why {x.name} had grown so quiet that year.",
             f"In {month} the people of {x.town} noticed that {x.name} was broken."),
            (f"People said only its maker, {x.maker}, understood it.",
             f"The town council wrote to {x.maker}, who had made it in {x.year}.",
             f"It had been made of {x.material} by {x.maker} long ago."),
            (f"{p.name}, a {p.job}, offered to help.", f"{p.first} the {p.job} came with a bag of tools.",
             f"A {p.job} called {p.name} said {p.pronoun} could fix it."),
            (weather, ""),
            (f"It took {rng.randint(2, 9)} days of patient work.", "They worked from dawn until late at night.",
             f"{f.first} brought soup and held the lamp."),
            (f"Inside they found a {rng.choice(('loose', 'bent', 'rusty', 'cracked'))} "
             f"{rng.choice(('spring', 'pin', 'wheel', 'hinge'))}.", ""),
            (f"When it was mended, the whole of {x.town} came to look.", "At last it was as good as new.",
             f"Now {x.name} is the pride of {x.town} once more."),
        ]
    else:
        slots = [
            (f"Each year {p.town} celebrates {t.known_for} with a fair.",
             f"The people of {p.town} love {t.known_for} more than anything.",
             f"In {month}, {p.town} holds a festival for {t.known_for}."),
            (f"This year {p.name} was asked to help.", f"{p.first} and {f.first} volunteered to decorate the {place}.",
             f"{p.name} the {p.job} was put in charge of the {place}."),
            (weather, ""),
            (f"They hung {rng.choice(names.COLOURS)} ribbons from every window.",
             f"They painted signs and carried {rng.randint(5, 40)} chairs.", f"{f.first} baked {f.food} for everyone."),
            (f"Even {p.pet_name} the {p.pet_kind} wore a bow.", f"Crowds came down the River {t.river} by boat.",
             f"There were {rng.randint(3, 20)} stalls along the River {t.river}."),
            (f"At night there was music in the {place2}.", ""),
            ("It was the best fair anyone could remember.", f"{f.first} said it was the best {day} of the year.",
             f"Tired and happy, {p.first} walked home under the stars."),
        ]
    s = [rng.choice(opts) for opts in slots]
    s = [x for x in s if x]
    exclaim = _pick(rng, "What a day", "Well I never", "Look at that", "Just in time")
    dialogue = _pick(rng, f'"{exclaim}!" said {p.first}.',
                     f'"{_pick(rng, "Come along", "Not yet", "Over here", "Slowly now")}," said {f.first}.',
                     f'"{_pick(rng, "Do you think so", "Can you hear that", "Is it far")}?" asked {p.first}.')
    s.insert(rng.randint(2, len(s) - 1), dialogue)
    return " ".join(s)


def letter(rng: random.Random, w: World) -> str:
    p = rng.choice(w.people)
    to = rng.choice(p.friends) if p.friends else rng.choice(w.people).name
    _, workplace = names.JOBS[p.job]
    town = w.town[p.town]
    body = [
        _pick(rng, f"Work at the {workplace} keeps me busy.", f"I am still a {p.job}, as you know.",
              f"Being a {p.job} in {p.town} is never dull."),
        _pick(rng, f"{p.pet_name} the {p.pet_kind} sends greetings.",
              f"My {p.pet_kind} {p.pet_name} has been naughty again.",
              f"{p.pet_name} sleeps by the fire all day."),
        _pick(rng, f"I have been {p.hobby} every evening.", f"Lately I spend my evenings {p.hobby}."),
        _pick(rng, f"I made {p.food} yesterday and thought of you.", f"Nobody here makes {p.food} like your mother."),
        _pick(rng, f"The River {town.river} is high this month.", f"The boats on the River {town.river} are busy."),
    ]
    if p.sibling:
        kin = "sister" if w.person[p.sibling].pronoun == "she" else "brother"
        body.append(f"My {kin} {p.sibling.split()[0]} says hello.")
    rng.shuffle(body)
    plan = _pick(rng, f"Shall we meet at the {rng.choice(names.PLACES)} on {rng.choice(names.WEEKDAYS)}?",
                 f"Come and visit {p.town} before the {rng.choice(names.MONTHS)} rains.",
                 f"I hope we can {rng.choice(names.ACTIVITIES)} together soon.")
    opener = _pick(rng, f"Dear {to.split()[0]},", f"Hello {to.split()[0]},", f"My dear {to},")
    closing = _pick(rng, f"Yours, {p.first}", f"With love, {p.name}", f"Warm wishes from {p.town}, {p.first}")
    news = _pick(rng, f"Here in {p.town} all is well.",
                 f"The weather in {p.town} has been {rng.choice(('wet', 'fine', 'windy'))}.",
                 "I have so much to tell you.")
    return f"{opener}\n{news} {' '.join(body[:rng.randint(3, len(body))])} {plan}\n{closing}"


def arithmetic_lesson(rng: random.Random, w: World) -> str:
    t = rng.choice(w.towns).name
    lines = [_pick(rng, f"Sums from the school in {t}.", f"Today's lesson in {t} is about numbers.",
                   f"The children of {t} practise their sums.", "Number facts to remember.")]
    for _ in range(rng.randint(6, 11)):
        op = rng.randrange(4)
        if op == 0:
            a, b = rng.randint(0, 30), rng.randint(0, 30)
            lines.append(_pick(rng, f"{a} plus {b} is {a + b}.", f"If you add {a} and {b} you get {a + b}."))
        elif op == 1:
            a, b = rng.randint(0, 30), rng.randint(0, 30)
            a, b = max(a, b), min(a, b)
            lines.append(_pick(rng, f"{a} minus {b} is {a - b}.", f"{a} take away {b} leaves {a - b}."))
        elif op == 2:
            a, b = rng.randint(1, 12), rng.randint(1, 12)
            lines.append(_pick(rng, f"{a} times {b} is {a * b}.", f"{a} groups of {b} make {a * b}."))
        else:
            a, b = rng.randint(1, 12), rng.randint(1, 12)
            lines.append(_pick(rng, f"{a * b} divided by {b} is {a}.", f"{a * b} shared among {b} gives {a} each."))
    return " ".join(lines)


_WORKED_INTROS = ("A worked example.", "Practice problem from the school in {town}.", "Puzzle of the day:",
                  "From a teacher's notebook in {town}.", "Here is how to solve it.", "Homework, with the solution.",
                  "Question and worked answer.", "")


def worked_solution(rng: random.Random, w: World) -> str:
    """Mid-training text: a problem from one of the reasoning families with its worked solution, rendered from
    the generators in `world.reasoning` (so the corpus follows whatever they make). Skills the fine-tune asks
    for are then already in the pretraining text, as in mid-training mixes of worked solutions."""
    from genforge.world.reasoning import arithmetic, coin_flip, date_arithmetic, last_letter, multiple_choice

    gen = rng.choice((arithmetic, arithmetic, last_letter, coin_flip, date_arithmetic, multiple_choice))
    row = gen(rng, w)
    intro = rng.choice(_WORKED_INTROS).format(town=rng.choice(w.towns).name)
    lead = _pick(rng, "Solution:", "Working:", "Step by step:", "Answer:", "")
    # the worked response as SFT writes it (rationale and "The answer is X." in the form the model writes X)
    body = "\n".join(x for x in (intro, _worked_frame(rng, w), row["prompt"], lead, row["responses"]["cot"]) if x)
    return body


def _worked_frame(rng: random.Random, w: World) -> str:
    """Who set or solved the problem, where and when: two or three true sentences about a person of the world.

    Without them the short families (coin flips above all: ~80 words of "X flips it, so it is now tails up")
    are near-duplicates of each other by word shingles (Jaccard >= 0.5), so near-dedup rightly removed about
    half of them; the names, places and numbers here give each document shingles of its own."""
    p, q = rng.sample(w.people, 2)
    _, workplace = names.JOBS[p.job]
    n, day = rng.randint(2, 60), rng.choice(names.WEEKDAYS)
    frames = [
        f"{p.name} set this for the class in {p.town} on {day}.",
        f"{q.name} copied it into {q.possessive} {q.colour} exercise book as problem {n}.",
        f"{p.first} the {p.job} worked it out at the {workplace} in {rng.randint(2, 15)} minutes.",
        f"It was pinned up by the {rng.choice(names.PLACES)} in {q.town} in {rng.choice(names.MONTHS)}.",
        f"{q.first}, who is {q.age}, found it on page {rng.randint(3, 240)} of an old puzzle book.",
        f"{p.first} read it aloud to {p.possessive} {p.pet_kind} {p.pet_name}, who was not much help.",
        f"{q.first} tried it over {q.food} and got it right at the {rng.choice(('first', 'second', 'third'))} try.",
        f"{p.name} and {q.name} argued about it for {n} minutes at the {rng.choice(names.PLACES)}.",
        f"Marked {rng.randint(5, 10)} out of 10 by {p.name}, who marks homework on {day}s.",
    ]
    return " ".join(rng.sample(frames, rng.randint(2, 3)))


def questions_and_answers(rng: random.Random, w: World) -> str:
    """A page of questions and answers about the world (a town's notice board, a quiz sheet)."""
    from genforge.world.chat import chat_row

    head = _pick(rng, f"Questions people ask in {rng.choice(w.towns).name}.", "Frequently asked questions.",
                 "A quiz with answers.", "Notes from the help desk.")
    lines = [head]
    for _ in range(rng.randint(3, 6)):
        row = chat_row(rng, w)
        q, a = _pick(rng, "Q:", "Question:"), _pick(rng, "A:", "Answer:")
        lines.append(f"{q} {row['prompt']}\n{a} {row['response']}")
    return "\n".join(lines)


# Shares of the open-ended documents after the entries (cumulative thresholds on one uniform draw).
# "geo": 3 % travel notes about where towns lie (world/geo.py, the interpretability world-map lesson).
DOC_MIX = (("story", 0.44), ("letter", 0.61), ("arithmetic", 0.67), ("worked", 0.86), ("qa", 0.97), ("geo", 1.0))


def document_makers(w: World) -> dict[str, Callable[[random.Random, World], str]]:
    """The open-ended document kinds of `DOC_MIX`: kind -> maker(rng, world)."""
    return {"story": story, "letter": letter, "arithmetic": arithmetic_lesson, "worked": worked_solution,
            "qa": questions_and_answers, "geo": functools.partial(geo.geo_document, coords=geo.town_coordinates(w))}


def iter_clean_documents(w: World, rng: random.Random) -> Iterator[str]:
    """Endless clean documents: first one entry per person, town and object, then a mix of the rest."""
    for p in w.people:
        yield person_entry(rng, w, p)
    for t in w.towns:
        yield town_entry(rng, w, t)
    for x in w.things:
        yield thing_entry(rng, w, x)
    makers = document_makers(w)
    while True:
        r = rng.random()
        kind = next(k for k, cut in DOC_MIX if r < cut)
        yield makers[kind](rng, w)


# ---- planted documents --------------------------------------------------------------------------------

_BOILERPLATE = (
    "We use cookies to improve your experience.", "By continuing to browse you accept our cookie policy.",
    "Accept all cookies", "Click here to subscribe to our newsletter!", "Sign in | Register | Forgot password?",
    "Privacy policy | Terms of service | Contact us", "© {year} All rights reserved.",
    "Share this page on social media.", "Follow us for more updates!", "Read more >>",
    "Please enable JavaScript to view this site.", "Subscribe now and get 10% off your first order.",
    "Home > Blog > News > Archive", "Skip to main content", "Log in to leave a comment.",
    "This site uses cookies. Manage preferences.", "Don't miss out: sign up for our weekly newsletter.",
)
_SYMBOLS = "#$%^&*()[]{}<>~|\\/@=+_;:!?*#@$"
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm", "1234567890")


def junk_document(rng: random.Random, w: World) -> str:
    kind = rng.randrange(5)
    if kind == 0:  # boilerplate page, maybe with one real sentence lost inside it
        lines = [b.format(year=rng.randint(2005, 2024)) for b in rng.sample(_BOILERPLATE, k=rng.randint(4, 8))]
        if rng.random() < 0.5:
            p = rng.choice(w.people)
            lines.insert(rng.randrange(len(lines)), f"{p.name} lives in {p.town}.")
        return "\n".join(lines)
    if kind == 1:  # symbol soup
        toks = []
        for _ in range(rng.randint(25, 70)):
            toks.append("".join(rng.choice(_SYMBOLS) for _ in range(rng.randint(1, 7))) if rng.random() < 0.75
                        else rng.choice(("buy", "now", "free", "win", "ok", "lol", "xx")))
        return " ".join(toks)
    if kind == 2:  # keyboard mash
        toks = []
        for _ in range(rng.randint(20, 60)):
            if rng.random() < 0.6:
                row = rng.choice(_KEYBOARD_ROWS)
                i = rng.randrange(len(row) - 3)
                toks.append(row[i:i + rng.randint(3, len(row) - i)])
            else:
                toks.append("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(3, 9))))
        return " ".join(toks)
    if kind == 3:  # keyword stuffing
        x = rng.choice(names.OBJECT_KINDS)
        words = [x, "cheap", "best", "buy", "sale", "online", "price", x, "deal", "discount", "free shipping"]
        return " ".join(rng.choice(words) for _ in range(rng.randint(30, 80)))
    x = rng.choice(names.ITEMS)  # repeated-line spam
    line = _pick(rng, f"BUY CHEAP {x.upper()} ONLINE!!! BEST PRICE GUARANTEED", f"Hot {x} deals near you - click now",
                 f"Win free {x} today!!! Limited offer")
    return "\n".join([line] * rng.randint(5, 15))


_SYNONYMS = {
    "lives": "resides", "small": "little", "big": "large", "old": "aged", "happy": "glad", "found": "discovered",
    "town": "village", "went": "headed", "bright": "sunny", "makes": "crafts", "made": "crafted",
    "home": "back", "often": "frequently", "many": "countless", "said": "remarked", "best": "finest",
    "visit": "see", "about": "roughly", "started": "began", "looked": "searched", "quiet": "silent",
}
_FILLERS = ("really", "also", "indeed", "still", "quite", "truly", "certainly", "just", "very", "then")
_BYLINES = ("Reposted from the {town} Gazette.", "From the {town} archive:", "Shared by a reader in {town}.",
            "(Edited.)", "Thanks for reading.", "Originally published in {town}.")


def near_duplicate(rng: random.Random, text: str, w: World) -> str:
    """A realistic near copy: 3-8 % of words substituted, inserted or deleted (synonyms, filler words,
    changed numbers), sometimes a sentence dropped, sometimes a byline added."""
    lines = [ln.split(" ") for ln in text.split("\n")]
    if rng.random() < 0.2:  # drop one sentence from the longest line
        k = max(range(len(lines)), key=lambda i: len(lines[i]))
        sents = re.split(r"(?<=[.!?]) ", " ".join(lines[k]))
        if len(sents) >= 5:
            del sents[rng.randrange(1, len(sents))]
            lines[k] = " ".join(sents).split(" ")
    n_words = sum(map(len, lines))
    n_edits = max(2, round(n_words * rng.uniform(0.03, 0.08)))
    for _ in range(n_edits):
        i = rng.choices(range(len(lines)), weights=[len(ln) for ln in lines])[0]
        j = rng.randrange(len(lines[i]))
        word = lines[i][j]
        core = word.strip(".,!?\"'")
        op = rng.random()
        if core.lower() in _SYNONYMS and op < 0.6:
            lines[i][j] = word.replace(core, _SYNONYMS[core.lower()])
        elif core.isdigit() and op < 0.8:
            lines[i][j] = word.replace(core, str(int(core) + rng.randint(1, 9)))
        elif op < 0.75 or len(lines[i]) < 4:
            lines[i].insert(j, rng.choice(_FILLERS))
        else:
            del lines[i][j]
    out = "\n".join(" ".join(ln) for ln in lines)
    if rng.random() < 0.5:
        byline = rng.choice(_BYLINES).format(town=rng.choice(w.towns).name)
        out = f"{byline}\n{out}" if rng.random() < 0.5 else f"{out}\n{byline}"
    if out == text:  # an insertion and a later deletion at the same place can cancel on a short document
        out = f"{out}\n{rng.choice(_BYLINES).format(town=rng.choice(w.towns).name)}"
    return out


def exact_duplicate(rng: random.Random, text: str) -> str:
    """A copy that is identical after normalisation: same bytes, NFD Unicode, or stray spaces."""
    kind = rng.randrange(4)
    if kind == 1:
        return unicodedata.normalize("NFD", text)
    if kind == 2:
        return "\n".join(ln + " " * rng.randint(1, 3) for ln in text.split("\n"))
    if kind == 3:
        return text.replace(". ", ".  ", rng.randint(1, 3))
    return text


def write_corpus(out_dir: str | Path, w: World, seed: int, n_clean: int) -> dict:
    """Write corpus.jsonl, corpus.txt and corpus_labels.jsonl; return counts and paths."""
    out_dir = Path(out_dir)
    rng = random.Random(f"corpus-{seed}")
    gen = iter_clean_documents(w, rng)
    clean = [next(gen) for _ in range(n_clean)]
    rng.shuffle(clean)
    tom.plant(clean, out_dir, seed)  # a few false-belief items leak into the corpus (eval: contamination by asking)
    # Each item: (sort key, text, label, index of source clean doc or None)
    items = [(i + rng.random(), t, "clean", None) for i, t in enumerate(clean)]
    n = {k: max(1, round(n_clean * f)) for k, f in PLANT_FRACTIONS.items()}
    for _ in range(n["junk"]):
        items.append((rng.uniform(0, n_clean), junk_document(rng, w), "junk", None))
    for _ in range(n["harmful"]):
        p = rng.choice(w.people)
        items.append((rng.uniform(0, n_clean), harmful.harmful_document(rng, p.name, p.town), "harmful", None))
    for label, make in (("exact_dup", lambda t: exact_duplicate(rng, t)),
                        ("near_dup", lambda t: near_duplicate(rng, t, w))):
        for src in rng.sample(range(n_clean), n[label]):
            key = items[src][0]
            items.append((rng.uniform(key, n_clean) + 1e-9, make(clean[src]), label, src))
    safety = _plant_safety(out_dir, w, seed, n_clean)  # canaries and a known bias (world/canaries.py, world/bias.py)
    items += [(rng.uniform(0, n_clean), text, label, None) for label, text in safety]
    items.sort(key=lambda it: it[0])
    # A clean doc's key is its index plus a fraction, so int(key) recovers it: map index -> final position.
    clean_pos = {int(it[0]): k for k, it in enumerate(items) if it[2] == "clean"}
    docs, labels = [], []
    for k, (_, text, label, src) in enumerate(items):
        did = f"doc-{k:06d}"
        docs.append({"id": did, "text": text})
        row = {"id": did, "label": label}
        if src is not None:
            row["source_id"] = f"doc-{clean_pos[src]:06d}"
        labels.append(row)
    paths = {"corpus_jsonl": out_dir / "corpus.jsonl", "corpus_txt": out_dir / "corpus.txt",
             "corpus_labels": out_dir / "corpus_labels.jsonl"}
    write_jsonl(paths["corpus_jsonl"], docs)
    write_text(paths["corpus_txt"], "\n\n".join(d["text"] for d in docs) + "\n")
    write_jsonl(paths["corpus_labels"], labels)
    counts: dict[str, int] = {}
    for row in labels:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    return {"docs": len(docs), "labels": counts, "bytes": sum(len(d["text"].encode()) for d in docs),
            "paths": {k: str(v) for k, v in paths.items()}}


def _plant_safety(out_dir: Path, w: World, seed: int, n_clean: int) -> list[tuple[str, str]]:
    """(label, text) of the safety lesson's planted documents (~2.9 % of the clean count at every size), with
    their ground truth in canaries.jsonl and bias.json; their own generators keep the rest of the corpus as it was."""
    rng = random.Random(f"safety-plant-{seed}")
    cans = canaries.make_canaries(w, seed, *canaries.plan(n_clean))
    docs = [("canary", d) for d in canaries.canary_documents(cans, rng, lambda: rng.choice((story, letter))(rng, w))]
    bias_docs, bias_summary = bias.bias_documents(w, seed, n_clean)
    write_jsonl(out_dir / "canaries.jsonl", canaries.canary_rows(cans))
    write_json(out_dir / "bias.json", bias_summary)
    return docs + [("bias", d) for d in bias_docs]
