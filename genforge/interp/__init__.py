"""Looking inside a model: read any layer, attention weights, the logit lens, linear probes, the world map,
in-context-learning anchors, a lie detector on hidden states and calibration of multiple-choice answers.

Everything works on a loaded `genforge.model.gpt.GPT` from the outside, through PyTorch forward hooks: the
model file is not changed to be looked at. Modules: `hooks` (residual stream, any module's output),
`attention` (weights recomputed from a layer's own inputs), `logit_lens`, `probes` (linear probes on the
shared Trainer with a shuffled-label control), `worldmap`, `icl_anchors`, `lie_detector`, `calibration`.
The speedrun's lesson is `genforge/speedrun/interp.py`.
"""
