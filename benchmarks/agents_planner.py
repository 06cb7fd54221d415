"""The planning agent vs its baselines on the text world: success rate and steps, with 95 % intervals.

    .venv/bin/python benchmarks/agents_planner.py [--episodes 200] [--towns 16] [--trajectory]

Baselines in the same run, on the same environments: memory without a plan (greedy on what it has
seen) and no memory (reacts to the current town only). Steps count failed episodes at the step limit.
"""

from __future__ import annotations

import argparse

from genforge.agents.env import make_env
from genforge.agents.planner import PlanningAgent, compare_agents, run_agent
from genforge.eval.stats import bootstrap_diff_paired, bootstrap_mean
from genforge.world.facts import build_world


def _ci(interval) -> tuple[float, float, float]:
    return interval.estimate, interval.low, interval.high


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--towns", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=80)
    ap.add_argument("--trajectory", action="store_true", help="print one full trajectory of the planner")
    args = ap.parse_args()
    w = build_world(0)

    def env(s: int):
        return make_env(w, s, n_towns=args.towns, extra_roads=args.towns // 4, n_flooded=3)
    res = compare_agents(env, list(range(args.episodes)), args.max_steps)
    plan_steps = [float(e.steps) for e in res["plan+memory"]]
    print(f"{args.episodes} episodes, {args.towns} towns, step limit {args.max_steps}")
    for name, eps in res.items():
        s, s_lo, s_hi = _ci(bootstrap_mean([float(e.success) for e in eps]))
        st, st_lo, st_hi = _ci(bootstrap_mean([float(e.steps) for e in eps]))
        line = f"{name:16s} success {s:.2f} [{s_lo:.2f}, {s_hi:.2f}]  steps {st:5.1f} [{st_lo:.1f}, {st_hi:.1f}]"
        if name != "plan+memory":
            d, lo, hi = _ci(bootstrap_diff_paired(plan_steps, [float(e.steps) for e in eps]))
            line += f"  planner - this: {d:+.1f} steps [{lo:+.1f}, {hi:+.1f}]"
        print(line)
    if args.trajectory:
        e = env(3)
        ep = run_agent(e, PlanningAgent(e.goal), args.max_steps)
        print(f"\ngoal: {e.goal.text}  (success={ep.success}, steps={ep.steps})")
        for p in ep.plans:
            print("  " + p)
        for a, o in ep.trajectory:
            print(f"> {a}\n  {o}")


if __name__ == "__main__":
    main()
