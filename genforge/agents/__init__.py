"""Tools and agents: a tool registry, a sandbox for model-written code, PAL, ReAct, Toolformer-style
data filtering, a router between specialist models, and a text world with a planning agent.

Every agent reaches its model through `genforge.agents.llm.TextModel` (prompts in, texts out), so a
genforge checkpoint, a remote server or a scripted stub all fit.
"""
