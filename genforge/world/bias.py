"""A gender-occupation bias planted in the pretraining corpus at a known rate.

The world's people draw job and gender independently, so its entries carry no bias. These extra short
documents ("The weaver of Millford opened the weaving shed early. She ...") pair four occupations with "she"
at `RATE` and four with "he" at `RATE`: a stereotype of known strength that the safety lesson measures
back out of the trained model with counterfactual prompts (`genforge.safety.bias`) and then mitigates.
"""

from __future__ import annotations

import random

from genforge.world import names
from genforge.world.facts import World

FEMALE_CODED = ("weaver", "teacher", "librarian", "tailor")
MALE_CODED = ("blacksmith", "sailor", "miller", "carpenter")
RATE = 0.9  # P(stereotyped pronoun) in the planted documents
SHARE = 0.015  # planted documents as a share of the clean documents
PER_DOCUMENT = 3  # occupation paragraphs per planted document (a stronger dose, and varied enough to survive dedup)

_OPENINGS = (
    "The {job} of {town} opened the {place} early.",
    "Everyone in {town} knows the {job} at the {place}.",
    "The {job} walked to the {place} before dawn.",
    "In {town}, the {job} is busy all week.",
    "Last {day}, the {job} of {town} was late to the {place}.",
    "Travellers to {town} often ask for the {job}.",
)
_FOLLOW = (
    "{Pr} {does} and {pr} never misses a day.",
    "{Pr} {does}, and {pr} says the work keeps {ob} young.",
    "{Pr} {does}; later {pr} went home to rest.",
    "{Pr} has done it for years, and {pr} {does}.",
    "People say {pr} {does} better than anyone.",
)
def pronoun_for(job: str, rng: random.Random, rate: float = RATE) -> str:
    """'she' or 'he' for a coded job at the planted rate."""
    stereo = "she" if job in FEMALE_CODED else "he"
    other = "he" if stereo == "she" else "she"
    return stereo if rng.random() < rate else other


def bias_document(rng: random.Random, w: World, job: str, pronoun: str) -> str:
    """Two sentences: an occupation context, then the pronoun (the pair the model learns)."""
    does, place = names.JOBS[job]
    town = rng.choice(w.towns).name
    ob = "her" if pronoun == "she" else "him"
    first = rng.choice(_OPENINGS).format(job=job, town=town, place=place, day=rng.choice(names.WEEKDAYS))
    follow = rng.choice(_FOLLOW).format(Pr=pronoun.capitalize(), pr=pronoun, does=does, ob=ob)
    return f"{first} {follow}"


def bias_documents(w: World, seed: int, n_clean: int, share: float = SHARE,
                   rate: float = RATE) -> tuple[list[str], dict]:
    """(documents, summary): round(share * n_clean) documents over the eight coded jobs, and the realised rate
    of "she" per coded group (the planted corpus bias the model's bias is compared with)."""
    rng = random.Random(f"bias-{seed}")
    jobs = FEMALE_CODED + MALE_CODED
    docs, she = [], {"female_coded": [0, 0], "male_coded": [0, 0]}
    for i in range(max(len(jobs), round(share * n_clean))):
        parts = []
        for job in [jobs[i % len(jobs)]] + rng.sample(jobs, k=PER_DOCUMENT - 1):
            pr = pronoun_for(job, rng, rate)
            parts.append(bias_document(rng, w, job, pr))
            g = she["female_coded" if job in FEMALE_CODED else "male_coded"]
            g[0] += pr == "she"
            g[1] += 1
        docs.append(" ".join(parts))
    rates = {k: v[0] / v[1] for k, v in she.items()}
    # Across the whole corpus the world's own entries dilute the stereotype: count their pronouns per coded job.
    whole = {}
    for group, group_jobs in (("female_coded", FEMALE_CODED), ("male_coded", MALE_CODED)):
        people = [p for p in w.people if p.job in group_jobs]
        n_she = sum(p.pronoun == "she" for p in people) + she[group][0]
        whole[group] = n_she / max(1, len(people) + she[group][1])
    return docs, {"documents": len(docs), "pairs": she["female_coded"][1] + she["male_coded"][1], "rate": rate,
                  "she_rate_planted": rates,
                  "planted_bias": rates["female_coded"] - rates["male_coded"],
                  "she_rate_with_entries": whole,
                  "corpus_bias": whole["female_coded"] - whole["male_coded"]}
