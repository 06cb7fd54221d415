"""World-derived labels: balanced sentiment, tags aligned with words, every topic present, deterministic."""

from genforge.world.facts import build_world
from genforge.world.labels import (
    ENTITY_TAGS,
    NEGATIVE,
    POSITIVE,
    TOPIC_LABELS,
    entity_examples,
    sentiment_examples,
    topic_examples,
)


def test_labels():
    w = build_world(0, 40, 8, 12)
    sent = sentiment_examples(w, 400, 0)
    assert sent == sentiment_examples(w, 400, 0) and sent != sentiment_examples(w, 400, 1)
    share = sum(y for _, y in sent) / len(sent)
    assert 0.4 < share < 0.6
    for text, y in sent[:50]:  # the label follows the phrase in the text
        assert any(p in text for p in (POSITIVE if y else NEGATIVE))
    assert not set(POSITIVE) & set(NEGATIVE)
    topics = topic_examples(w, 200, 0)
    assert {y for _, y in topics} == set(range(len(TOPIC_LABELS)))
    assert all("\n" not in t and len(t) <= 200 for t, _ in topics)
    for words, tags in entity_examples(w, 50, 0):
        assert len(words) == len(tags) and set(tags) <= set(ENTITY_TAGS)
        assert "B-PER" in tags and all(t[2:] == p[2:] for p, t in zip(tags, tags[1:]) if t.startswith("I-"))
