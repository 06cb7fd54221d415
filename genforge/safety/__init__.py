"""The safety suite: measure how a model fails and what helps.

- `bias`: counterfactual swaps (he/she, names) on occupation prompts; mitigations at four stages;
- `jailbreak`: attack templates around held-out harmful requests, judged by the world's refusal oracle;
- `injection`: instructions hidden in a retrieved document or a tool result, with and without defences;
- `extraction`: canary exposure (Carlini et al. 2019), verbatim extraction by prefix and by repeating a word;
- `detect`: an n-gram classifier for AI-written text vs the watermark detector, and their degradation;
- `hallucination`: answers about world entities fact-checked against the world's tables;
- `unlearn`: gradient ascent and NPO on planted facts; `edit`: a ROME-style rank-one edit;
- `garak`: the published scanner against `genforge serve`.

Each module measures; the lesson (`genforge.speedrun.safety`) and `genforge safety` put the numbers in a report.
"""
