from genforge.eval.contamination import (
    ask_reproduction,
    family_template,
    lcs_share,
    reproduced_share,
    specific_share,
    split_at_secret,
    split_item,
)
from genforge.eval.lm import StubLM

SEEN = ["Ysolde and Quenby are in the attic. Ysolde puts the acorn in the drawer. Ysolde leaves the attic.",
        "Wrennie and Oriel are in the cellar. Wrennie puts the locket in the canister. Wrennie leaves the cellar."]
UNSEEN = ["Tamsin and Lorcaster are in the pantry. Tamsin puts the ribbon in the crate. Tamsin leaves the pantry.",
          "Ione and Casimir are in the parlour. Ione puts the feather in the sock. Ione leaves the parlour."]


def memoriser(prompt: str, i, rng) -> str:
    """A stub that memorised SEEN: continues a seen text verbatim; otherwise continues with the template's words."""
    for t in SEEN:
        if t.startswith(prompt):
            return t[len(prompt):]
    return " and Quenby are in the attic."


def test_split_and_share():
    p, rest = split_item("a b c d", 0.5)
    assert p == "a b" and rest == ["c", "d"]
    assert reproduced_share("c d e", ["c", "d"], 2) == 1.0
    assert reproduced_share("c x", ["c", "d"], 2) == 0.5
    assert reproduced_share("", ["c"], 5) == 0.0
    # in-order overlap: "a x c d" keeps a, c, d of "a b c d" (3 of 4); order matters ("d c" keeps 1 of 2)
    assert lcs_share("a x c d", "a b c d".split(), 4) == 0.75
    assert lcs_share("d c", ["c", "d"], 2) == 0.5 and lcs_share("zzz", ["c"], 1) == 0.0


def test_memorised_items_come_back_and_clean_ones_do_not():
    lm = StubLM(respond=memoriser)
    seen = ask_reproduction(lm, SEEN, words=8)
    unseen = ask_reproduction(lm, UNSEEN, words=8)
    assert all(r["verbatim"] == 1.0 for r in seen)
    assert all(r["reproduced"] < 0.5 for r in unseen)
    assert lm.calls[0][1]["temperature"] == 0.0


def test_item_specific_words_separate_memory_from_the_template():
    """A model that writes the family's template with a fixed container reproduces most words of every item, seen or
    not; only the item-specific word (where the object was moved) tells the memorised items apart."""
    from genforge.world import tom

    seen = [it["text"] for it in tom.false_belief_items(8, 0, ("false_belief",), salt="planted")]
    fresh = [it["text"] for it in tom.false_belief_items(8, 0, ("false_belief",), salt="clean")]
    template = family_template(seen + fresh)
    assert {"moves", "the", "while"} <= {w.lower() for w in template} and "thimble" not in template

    def respond(prompt, i, rng):
        for t in seen:  # memorised: the true rest
            if t.startswith(prompt):
                return t[len(prompt):]
        who = prompt.split()[0]  # not memorised: the template, with a container that is right 1 time in 11
        return f" barrel. {who} comes back. Question: Where will {who} look for the thing first?"

    lm = StubLM(respond=respond)
    p = ask_reproduction(lm, seen, words=12, template=template)
    c = ask_reproduction(lm, fresh, words=12, template=template)
    # the cut falls just before the moved-to container: the first word past the middle no template predicts
    assert all(r["prompt"].endswith(" to the") for r in p + c)
    assert all(r["specific"] == 1.0 for r in p)
    assert sum(r["specific"] for r in c) / len(c) < 0.3
    # the share of all words cannot tell them apart by much: the template carries most of the rest
    assert sum(r["reproduced"] for r in c) / len(c) > 0.5


def test_split_at_secret_falls_back_without_a_specific_word():
    p, rest = split_at_secret("a b a b a b", {"a", "b"})
    assert (p, rest) == split_item("a b a b a b")
    assert specific_share("x", "a b", ["a", "b"], {"a"}, 4) is None
