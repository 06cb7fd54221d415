"""An agent that plans: memory of observations, a plan of short-term goals, re-planning on failure.

`PlanningAgent` keeps a memory (the road map it has seen, flooded roads, where objects and people are,
who it already asked), writes a plan of short-term goals for "bring OBJ from X to P" (reach X, take
OBJ, find where P lives, reach P's town, give OBJ to P), executes the first one by shortest path over
the *known* map (exploring the nearest unvisited town when the target is not on it yet), and re-plans
whenever an action fails (a flooded road, a person who does not know). Baselines on the same
environments: `ReactiveAgent` with no memory (it only sees the current town: a random walk that takes
and gives when it can) and `GreedyMemoryAgent` with memory but no plan (the greedy move on what it has
seen; it never sets out to find where the person lives, so it explores until it meets them).
Agents speak the environment's text actions, so an LM policy fits the same loop.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from genforge.agents.env import Goal, Observation, TextWorld


@dataclass
class Memory:
    roads: dict[str, set[str]] = field(default_factory=dict)
    flooded: set[frozenset] = field(default_factory=set)
    visited: set[str] = field(default_factory=set)
    object_at: dict[str, str] = field(default_factory=dict)
    lives_in: dict[str, str] = field(default_factory=dict)
    asked_in: set[str] = field(default_factory=set)  # towns where we already asked about the goal person

    def update(self, obs: Observation) -> None:
        self.visited.add(obs.town)
        self.roads.setdefault(obs.town, set()).update(obs.roads)
        for t in obs.roads:
            self.roads.setdefault(t, set()).add(obs.town)
        for o in obs.objects:
            self.object_at[o] = obs.town
        for p in obs.people:
            self.lives_in[p] = obs.town
        if " says: " in obs.message and " lives in " in obs.message:
            said = obs.message.split(" says: ", 1)[1].rstrip(".")
            name, town = said.split(" lives in ", 1)
            self.lives_in[name] = town
        if obs.message.startswith("The road to ") and obs.message.endswith(" is flooded."):
            self.flooded.add(frozenset((obs.town, obs.message[len("The road to "):-len(" is flooded.")])))

    def path(self, src: str, dst: str) -> list[str] | None:
        """Shortest known path src -> dst avoiding known floods (towns after src), or None."""
        prev: dict[str, str | None] = {src: None}
        q = deque([src])
        while q:
            t = q.popleft()
            if t == dst:
                out = []
                while t != src:
                    out.append(t)
                    t = prev[t]
                return out[::-1]
            for n in sorted(self.roads.get(t, ())):
                if n not in prev and frozenset((t, n)) not in self.flooded:
                    prev[n] = t
                    q.append(n)
        return None

    def nearest_unvisited(self, src: str) -> list[str] | None:
        """Path to the closest known town not yet visited."""
        best = None
        for t in sorted(self.roads):
            if t not in self.visited:
                p = self.path(src, t)
                if p and (best is None or len(p) < len(best)):
                    best = p
        return best


class PlanningAgent:
    """Memory + a plan of short-term goals + re-planning on failure."""

    def __init__(self, goal: Goal):
        self.goal = goal
        self.mem = Memory()
        self.plan: list[str] = []
        self.log: list[str] = []  # plans written, for the report's trajectory

    def make_plan(self, obs: Observation) -> list[str]:
        g = self.goal
        plan = []
        if g.obj not in obs.carrying:
            plan += [f"reach {self.mem.object_at.get(g.obj, g.from_town)}", f"take {g.obj}"]
        if g.person not in self.mem.lives_in:
            plan.append(f"find where {g.person} lives")
        plan += [f"reach home of {g.person}", f"give {g.obj} to {g.person}"]
        return plan

    def act(self, obs: Observation) -> str:
        self.mem.update(obs)
        # Failures of our own actions trigger a re-plan; "I do not know" is information, not a failure.
        failed = any(s in obs.message for s in ("flooded", "not here", "There is no", "do not carry"))
        if not self.plan or failed:
            self.plan = self.make_plan(obs)
            self.log.append(("re-plan after: " + obs.message + " -> " if failed else "plan: ") + " ; ".join(self.plan))
        while self.plan:
            sub = self.plan[0]
            action = self._pursue(sub, obs)
            if action is not None:
                return action
            self.plan.pop(0)  # this short-term goal is done
        return "look"

    def _go_towards(self, town: str, obs: Observation) -> str | None:
        if town == obs.town:
            return None
        path = self.mem.path(obs.town, town) or self.mem.nearest_unvisited(obs.town)
        return f"go {path[0]}" if path else "look"

    def _pursue(self, sub: str, obs: Observation) -> str | None:
        g = self.goal
        if sub.startswith("reach home of "):
            town = self.mem.lives_in.get(g.person)
            if town is None:  # learned nothing yet: go find out first
                self.plan.insert(0, f"find where {g.person} lives")
                return self._pursue(self.plan[0], obs)
            return self._go_towards(town, obs)
        if sub.startswith("reach "):
            return self._go_towards(sub[len("reach "):], obs)
        if sub.startswith("take "):
            return None if g.obj in obs.carrying else f"take {g.obj}"
        if sub.startswith("find where "):
            if g.person in self.mem.lives_in:
                return None
            # One question per town: neighbours know the same towns (only friendships differ), so a
            # second answer rarely adds anything and costs a step.
            if obs.people and obs.town not in self.mem.asked_in:
                self.mem.asked_in.add(obs.town)
                return f"ask {obs.people[0]} about {g.person}"
            path = self.mem.nearest_unvisited(obs.town)
            return f"go {path[0]}" if path else "look"
        if sub.startswith("give "):
            done = g.obj not in obs.carrying and g.obj not in self.mem.object_at
            return None if done else f"give {g.obj} to {g.person}"
        return None


class GreedyMemoryAgent:
    """Baseline with memory but no plan: each step, the greedy move given what it has seen so far
    (to the object if seen, to the person if seen, else the nearest unvisited town); it never asks."""

    def __init__(self, goal: Goal):
        self.goal, self.mem = goal, Memory()
        self.log: list[str] = []

    def act(self, obs: Observation) -> str:
        g, m = self.goal, self.mem
        m.update(obs)
        if g.obj in obs.objects:
            return f"take {g.obj}"
        if g.obj in obs.carrying and g.person in obs.people:
            return f"give {g.obj} to {g.person}"
        target = m.lives_in.get(g.person) if g.obj in obs.carrying else m.object_at.get(g.obj)
        path = (m.path(obs.town, target) if target else None) or m.nearest_unvisited(obs.town)
        return f"go {path[0]}" if path else f"go {sorted(obs.roads)[0]}"


class ReactiveAgent:
    """Baselines: act on the current observation; `memory=True` adds a preference for unvisited towns."""

    def __init__(self, goal: Goal, memory: bool = False, seed: int = 0):
        self.goal, self.memory = goal, memory
        self.rng = random.Random(seed)
        self.visited: set[str] = set()
        self.log: list[str] = []

    def act(self, obs: Observation) -> str:
        g = self.goal
        if self.memory:
            self.visited.add(obs.town)
        if g.obj in obs.objects:
            return f"take {g.obj}"
        if g.obj in obs.carrying and g.person in obs.people:
            return f"give {g.obj} to {g.person}"
        roads = obs.roads
        if self.memory:
            roads = [t for t in obs.roads if t not in self.visited] or obs.roads
        return f"go {self.rng.choice(roads)}"


@dataclass
class Episode:
    success: bool
    steps: int
    trajectory: list[tuple[str, str]]  # (action, observation text)
    plans: list[str]


def run_agent(env: TextWorld, agent, max_steps: int = 60) -> Episode:
    obs = env.reset()
    traj = [("(start)", obs.text)]
    while env.steps < max_steps and not env.success:
        action = agent.act(obs)
        obs = env.step(action)
        traj.append((action, obs.text))
    return Episode(env.success, env.steps, traj, list(getattr(agent, "log", [])))


AGENTS = {"plan+memory": lambda g, s: PlanningAgent(g),
          "memory, no plan": lambda g, s: GreedyMemoryAgent(g),
          "no memory": lambda g, s: ReactiveAgent(g, memory=False, seed=s)}


def compare_agents(make_env_fn, seeds: list[int], max_steps: int = 60) -> dict[str, list[Episode]]:
    """Each agent on fresh copies of the same environments (make_env_fn(seed) -> TextWorld)."""
    return {name: [run_agent(make_env_fn(s), factory(make_env_fn(s).goal, s), max_steps) for s in seeds]
            for name, factory in AGENTS.items()}
