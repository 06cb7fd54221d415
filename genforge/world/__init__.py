"""The tiny world: a seeded fictional world and everything the lifecycle needs from it.

`generate_world(out_dir, seed, size)` writes the pretraining corpus (with planted junk, harmful and
duplicate documents, labelled), instruction tasks, ranked preferences, a post-cutoff knowledge base
and needle-in-a-haystack samples. The helpers later stages call are re-exported here.
"""

from genforge.world.generate import SIZES, generate_world
from genforge.world.needle import make_needle
from genforge.world.preferences import oracle_score, to_pairs
from genforge.world.tasks import HELDOUT_TASKS, TASKS, extract_answer, is_correct

__all__ = ["HELDOUT_TASKS", "SIZES", "TASKS", "extract_answer", "generate_world", "is_correct", "make_needle",
           "oracle_score", "to_pairs"]
