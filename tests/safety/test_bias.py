import torch

from genforge.eval.lm import StubLM
from genforge.safety import bias
from genforge.world.bias import FEMALE_CODED, MALE_CODED


def _diff_words(a: str, b: str) -> list[tuple[str, str]]:
    wa, wb = a.split(), b.split()
    assert len(wa) == len(wb)
    return [(x, y) for x, y in zip(wa, wb) if x != y]


def test_counterfactual_pairs_differ_only_in_the_swapped_word():
    pairs = bias.counterfactual_pairs(["Millford", "Ashby"], per_job=3)
    assert len(pairs) == 3 * (len(FEMALE_CODED) + len(MALE_CODED))
    for p in pairs:
        d = _diff_words(p.stereotyped, p.other)
        assert len(d) == 1, (p.stereotyped, p.other)
        (x, y), = d
        assert {x.lower().strip(".,"), y.lower().strip(".,")} == {"she", "he"}
        stereo = "she" if p.group == "female_coded" else "he"
        assert x.lower() == stereo


def test_swap_gender_is_an_involution_on_unambiguous_words():
    t = "Mara said he would meet his brother, and She laughed."
    s = bias.swap_gender(t)
    assert s != t and "she would meet her sister" in s and "He laughed" in s
    assert _diff_words(t, s)  # something swapped
    assert bias.swap_gender("The weaver of Ashby") == "The weaver of Ashby"


def test_stereotype_scores_read_the_gap_beyond_the_frames_prior():
    # a model that prefers "she" everywhere has a prior, not a stereotype: score 0 on every pair
    prior = StubLM(score=lambda c, x: 0.0 if x.strip().lower() == "she" else -1.0)
    pairs = bias.counterfactual_pairs(["Ashby"], per_job=3)
    assert all(p.neutral_prefixes and p.prefix and p.stereotyped.startswith(p.prefix) for p in pairs)
    assert all(abs(v) < 1e-9 for v in bias.stereotype_scores(prior, pairs))
    # one that prefers the stereotyped pronoun after coded jobs only scores +1 on every pair
    coded = {j: "she" for j in FEMALE_CODED} | {j: "he" for j in MALE_CODED}

    def score(c: str, x: str) -> float:
        job = next((j for j in coded if f" {j} " in f" {c} "), None)
        return 0.0 if job and x.strip().lower() == coded[job] else -1.0 if job else -0.5

    s = bias.stereotype_scores(StubLM(score=score), pairs)
    assert all(abs(v - 1.0) < 1e-9 for v in s)
    assert bias.stereotype_rate(s) == 1.0


def test_project_out_removes_the_direction(tiny_model):
    layer = tiny_model.layers[0]
    u = torch.randn(tiny_model.config.width)
    ids = torch.randint(0, 50, (2, 5))
    hook = bias.ProjectOut(u).attach(layer)
    got = []
    h2 = layer.register_forward_hook(lambda m, i, o: got.append(o))
    try:
        tiny_model(ids)
    finally:
        hook.remove()
        h2.remove()
    assert torch.allclose(got[0] @ (u / u.norm()), torch.zeros(2, 5), atol=1e-5)


def test_rerank_prefers_the_counterfactually_stable_candidate():
    # the model likes "she" much more than "he": a she-candidate has a big gap, a gender-free one none
    lm = StubLM(score=lambda c, x: -0.1 if "she" in x.split() else (-5.0 if "he" in x.split() else -2.0))
    assert bias.rerank(lm, ["and she left", "and then left"]) == 1
    # the one the model finds no likelier than its swap wins over the one it prefers to its swap
    assert bias.rerank(lm, ["and she left", "and he left"]) == 1
    assert bias.first_pronoun("then Her cat") == "she" and bias.first_pronoun("nobody") is None


def test_planted_pronoun_share_reads_the_sentence_after_a_coded_job():
    from genforge.safety.suite import planted_pronoun_share

    docs = ["The weaver of Ashby opened the weaving shed early. She weaves wool. The baker slept. He woke.",
            "Everyone in Ashby knows the miller at the mill. He grinds wheat into flour."]
    # the stub likes "She" everywhere: the weaver's sentence is stereotyped (> 0.5), the miller's is not
    lm = StubLM(score=lambda c, x: 0.0 if x.strip() == "She" else -1.0)
    got = planted_pronoun_share(lm, docs)
    assert len(got) == 2  # the baker is not a coded job
    assert got[0] > 0.5 > got[1]
