"""The text world's rules, and the planning agent against its no-memory / no-plan baselines."""

from __future__ import annotations

from genforge.agents.env import Goal, TextWorld, make_env
from genforge.agents.planner import Memory, PlanningAgent, compare_agents, run_agent
from genforge.world.facts import build_world

W = build_world(0)


def _line() -> TextWorld:
    """A - B - C with a flooded shortcut A - C; the lamp lies in B, Petra lives in C, Bo in A knows her."""
    env = TextWorld(roads={"A": ["B", "C"], "B": ["A", "C"], "C": ["A", "B"]},
                    home={"Bo": "A", "Petra": "C"}, friends={"Bo": ["Petra"]}, objects={"the lamp": "B"},
                    flooded={frozenset(("A", "C"))}, start="A", goal=Goal("the lamp", "B", "Petra"))
    env.reset()
    return env


def test_env_rules_and_partial_observation():
    env = _line()
    obs = env.reset()
    assert obs.town == "A" and obs.people == ["Bo"] and obs.objects == [] and "Roads lead to B, C." in obs.text
    assert env.step("go C").message == "The road to C is flooded."
    assert env.step("take the lamp").message == "There is no the lamp here."
    assert env.step("ask Bo about Petra").message == "Bo says: Petra lives in C."
    assert env.step("dance").message.startswith("I do not understand")
    env.step("go B")
    env.step("take the lamp")
    assert env.step("give the lamp to Petra").message == "Petra is not here."
    env.step("go C")
    assert env.step("give the lamp to Petra").message == "You give the lamp to Petra."
    assert env.success and env.steps == 9


def test_planner_replans_around_a_flooded_road_exact_trajectory():
    env = _line()
    env.objects["the lamp"] = "A"  # the lamp is here; Petra is across the flooded shortcut
    ep = run_agent(env, PlanningAgent(env.goal))
    assert [a for a, _ in ep.trajectory] == ["(start)", "take the lamp", "ask Bo about Petra", "go C", "go B", "go C",
                                             "give the lamp to Petra"]
    assert ep.success and ep.steps == 6
    assert ep.plans[0].startswith("plan: reach A ; take the lamp ; find where Petra lives")
    assert ep.plans[1].startswith("re-plan after: The road to C is flooded.")


def test_memory_paths_avoid_known_floods():
    m = Memory(roads={"A": {"B", "C"}, "B": {"A", "C"}, "C": {"A", "B"}})
    assert m.path("A", "C") == ["C"]
    m.flooded.add(frozenset(("A", "C")))
    assert m.path("A", "C") == ["B", "C"]


def test_make_env_is_seeded_and_connected():
    a, b = make_env(W, 5), make_env(W, 5)
    assert a.goal == b.goal and a.roads == b.roads and a.flooded == b.flooded
    m = Memory(roads={t: set(r) for t, r in a.roads.items()}, flooded=set(a.flooded))
    assert all(m.path(a.start, t) is not None for t in a.roads if t != a.start)  # floods never cut a town off


def test_planning_beats_no_memory_and_matches_no_plan():
    seeds = list(range(40))
    res = compare_agents(lambda s: make_env(W, s, n_towns=16, extra_roads=4, n_flooded=3), seeds, max_steps=80)
    rate = {k: sum(e.success for e in v) / len(v) for k, v in res.items()}
    steps = {k: sum(e.steps for e in v) / len(v) for k, v in res.items()}
    assert rate["plan+memory"] == 1.0 and rate["no memory"] < 0.8
    assert steps["plan+memory"] < steps["no memory"] / 2
    assert steps["plan+memory"] <= steps["memory, no plan"] * 1.1
