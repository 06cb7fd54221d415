from genforge.eval.contamination import ask_reproduction, lcs_share, reproduced_share, split_item
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
