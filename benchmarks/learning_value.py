"""What advice is worth, through the real stack: env steps to evaluation 0.8 per advisor, scored with advice OFF.

Every arm runs `ala up --no-broker` (actor, learner, router, evaluator, and the advisor where there is one) over a
real nats-server, as `benchmarks/learning.py` does; the evaluator plays the policy alone (no bias) on held-out
seeds, so an arm only scores what the *policy* learned. Arms:

- `plain`: no advisor.
- `local`: `ala train --local`, the single-process trainer, no advice (the baseline of `benchmarks.learning`).
- `expert`: the shortest-path planner (privileged full state): the upper bound of good advice. Every arm runs the
  defaults unless it says otherwise: since value-8x8.md, advice both tilts sampling and is distilled where trust lets
  it (`ALA_ACTOR_ADVICE_MODE=both`); reports before it ran the bias alone (now `expert-bias`, `wrong-bias`,
  `random-bias`), and `-both` arms named the mode explicitly.
- `wrong`: the planner's advice, always replaced by a wrong action; `half-wrong`: wrong half the time.
- `random`: a uniformly random action at the expert's strength: tells knowledge from perturbation.
- `llm`, `llm-cache`: the embedded SmolLM2-135M (weak: it proves plumbing), without and with the advice cache.
- `expert-shortcut`: the expert with ALA's shortcut ratio instead of the exact importance weight.
- `expert-notrust`: the expert with the router's evidence-driven trust off (full strength from the start).
- `expert-s1`: the expert at strength 1 instead of the default 3.
- `expert-strength`, `wrong-strength`, `random-strength`: trust acting on the bias's strength in every advised
  episode (the previous default) instead of on its reach (the share of episodes it applies in, at full strength).
- `plain-vtrace`, `expert-vtrace`, `wrong-vtrace`, `random-vtrace`: V-trace advantages and value targets (traces
  cut where the behaviour took an action the policy would not), instead of GAE along the biased behaviour.
- `expert-anneal`: the expert with strength falling linearly to 0 over 100 learner versions.
- `expert-fullkey`: every state keyed by the full state at the actor (`ALA_ACTOR_STATE_KEY=full_state`);
  `expert-ask`: the actor asks 5x as often (a digest per bot every 0.02 s); `expert-b3`: bias bound 3 instead of 2.
- `expert-ahead`, `wrong-ahead`: the planner also advises the next 8 exact states along its plan (`lookahead`),
  right or always wrong.
- `distill`: the expert's advice distilled into the policy by the learner (a cross-entropy term annealed over
  `ALA_LEARNER_DISTILL_HORIZON` versions), the actor sampling from the policy alone (LLM4Teach, arXiv 2311.13373);
  trust off and no control group, since no episode is steered.

- `null`: an advisor whose advice is a zero bias for every action, with router trust off (trust would silence it):
  its batches count as advised throughout (so the learner applies the advised normaliser floor,
  `ALA_LEARNER_ADV_NORM_FLOOR_ADVISED`) while nothing changes what the bots do.
  Advice against `null` is the advice's own effect; `null` against `plain` is the floor's.

Reported per arm (`benchmarks.stats`): runs that reached 0.8 (two consecutive evaluations), the IQM of env steps
with a 95% stratified bootstrap interval, the geometric mean of per-seed ratios to `plain` and to `null` (a run that
never got there counts at the steps it ran, and the ratio is then a bound), the probability of needing fewer steps
than `plain`, the return at the budget, seconds from process start, backend calls, and advice precision: the share
of judged advised steps whose favourite action is the planner's for the state the bot was actually in
(`ALA_ACTOR_JUDGE_RATE`).

    python -m benchmarks.learning_value [--envs MiniGrid-DoorKey-5x5-v0] [--arms plain --arms expert] [--seeds 5]

Why one file over 300 lines: the arms' runner and its report, one benchmark; the arms themselves are data
(benchmarks/arms.toml).
"""

from __future__ import annotations

import json
import statistics
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ala import settings_file
from benchmarks.learning import (
    Run,
    StackArm,
    arm_settings,
    comparison_cells,
    paired_ratios,
    plot_curves,
    run_local,
    run_stack,
    save,
    steps_per_seed,
)
from benchmarks.report import provenance
from benchmarks.stats import Figure, geometric_mean_ratio, iqm

SERVICES = ("actor", "learner", "router", "evaluator", "advisor")
BUDGET = {  # env steps, seconds: every arm runs to the same budget, so final returns compare
    "MiniGrid-DoorKey-5x5-v0": (60_000, 120.0),
    "MiniGrid-DoorKey-8x8-v0": (400_000, 300.0),
    "MiniGrid-LavaGapS5-v0": (150_000, 120.0),  # untuned: chosen after every default was set
    "MiniGrid-SimpleCrossingS9N1-v0": (400_000, 300.0),  # untuned too (issue 27)
}
DEFAULT_BUDGET = (1_000_000, 600.0)
SCRAPE = {
    "judged_right": ("actor", "ala_actor_advice_judged_total", {"verdict": "right"}),
    "judged_wrong": ("actor", "ala_actor_advice_judged_total", {"verdict": "wrong"}),
    "biased_state_steps": ("actor", "ala_actor_biased_steps_total", {"scope": "state"}),
    "env_steps": ("actor", "ala_actor_env_steps_total", {}),
    "digests": ("actor", "ala_actor_digests_total", {}),
    "backend_calls": ("advisor", "ala_advisor_llm_seconds_count", {}),
    "trust": ("router", "ala_router_trust", {}),
    "cache_hits": ("advisor", "ala_advisor_cache_hits_total", {}),
    "situation_hits": ("advisor", "ala_advisor_situation_cache_total", {"result": "hit"}),
    "cache_max_distance": ("advisor", "ala_advisor_cache_max_distance", {}),
    "rankings": ("advisor", "ala_advisor_preferences_total", {"outcome": "ranked"}),
    "rankings_kept": ("learner", "ala_learner_preferences_total", {"outcome": "kept"}),
    "reviews": ("advisor", "ala_advisor_reviews_total", {}),
    "review_advice": ("advisor", "ala_advisor_review_advice_total", {}),
    "implicit_rewards_applied": ("learner", "ala_learner_implicit_rewards_applied_total", {}),
}

FOLLOW = {
    "trust": SCRAPE["trust"],
    "entropy": ("learner", "ala_learner_training", {"stat": "losses/entropy"}),
    "biased_steps": ("actor", "ala_actor_biased_steps_total", {}),
    "strength": ("router", "ala_router_strength", {}),
}
"""Read at every evaluation: trust over time, the policy's entropy (to see a collapse), and the bias strength after
the schedule (where advice is annealed away)."""


ARMS_FILE = Path(__file__).with_name("arms.toml")
ADVISED: dict[str, Any] = {"advisor": {"cache": False}, "actor": {"experimental": {"judge_rate": 0.05}}}
"""Under every arm with advisors: no answer cache (each run asks for itself), and 5% of advice judged against the
planner (the precision column)."""


def load_arms(path: Path = ARMS_FILE) -> dict[str, StackArm]:
    """Every arm of `path` (benchmarks/arms.toml): its overlay's variables, checked as a configuration file's."""
    return {name: arm_of(overlay, f"{path.name} [{name}]") for name, overlay in tomllib.loads(path.read_text()).items()}


def arm_of(overlay: dict[str, Any], origin: str) -> StackArm:
    """The stack arm an overlay in the configuration file's format describes (`origin` names it in errors)."""
    from ala.cli import config_sections
    from services import SERVICE_NAMES

    advisors = overlay.get("advisor", {}).get("advisors", [])
    for advisor in advisors:
        advisor.setdefault("name", advisor.get("backend", ""))
    ranks = "preference_ranker" in overlay.get("advisor", {}).get("experimental", {})
    reviews = bool(overlay.get("advisor", {}).get("review", False))
    if advisors or reviews:  # a review advises too
        overlay = merged(ADVISED, overlay)
    env = settings_file.variables_from(overlay, config_sections(), SERVICE_NAMES, origin)
    if advisors or ranks or reviews:  # a ranker and a review run in the advisor service
        return StackArm(env=env, services=SERVICES, scrape=SCRAPE, follow=FOLLOW)
    # No advisor: env steps and the policy's entropy are all there is to read.
    return StackArm(env=env, scrape={"env_steps": SCRAPE["env_steps"]}, follow={"entropy": FOLLOW["entropy"]})


def merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` over `base`, table by table."""
    result = dict(base)
    for key, value in overlay.items():
        result[key] = (
            merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
        )
    return result


ARMS = load_arms()
LOCAL = "local"
"""`ala train --local`, the single-process trainer (benchmarks.learning's baseline), in the same run as the stack
arms: no advice, stopped once it reaches the threshold (so it shows no final return)."""
LOCAL_SETTINGS = {"process": "ala train --local (no broker, no advice)"}
ALL_ARMS = (LOCAL, *ARMS)

DEFAULT_ARMS = (
    "plain",
    "null",
    "expert",
    "wrong",
    "half-wrong",
    "random",
    "expert-shortcut",
    "expert-notrust",
    "expert-s1",
    "expert-anneal",
    "distill",
)


def final_return(run: Run) -> float | None:
    """The evaluation return at the budget: the run's last evaluation. None for a run stopped at the threshold, which
    never reached the budget."""
    if run.stopped == "threshold" or not run.curve:
        return None
    return run.curve[-1][2]


def final_return_cell(runs: list[Run]) -> str:
    finals = [value for value in map(final_return, runs) if value is not None]
    if not finals:
        return "-"
    shown = iqm([Figure(value) for value in finals]).show()
    return shown if len(finals) == len(runs) else f"{shown} [{len(finals)}/{len(runs)} runs]"


def precision(runs: list[Run]) -> str:
    right = sum(r.scraped.get("judged_right", 0.0) for r in runs)
    wrong = sum(r.scraped.get("judged_wrong", 0.0) for r in runs)
    return f"{right / (right + wrong):.2f} ({int(right + wrong):,})" if right + wrong else "-"


def report(runs: list[Run], seeds: int, command: str, budgets: dict[str, int], parallel: int = 1) -> str:
    at_a_time = "one run at a time" if parallel == 1 else f"up to {parallel} runs at a time"
    present = [arm for arm in ALL_ARMS if any(r.arm == arm for r in runs)]
    lines = [
        "# What advice is worth, through the stack (scored with advice off)",
        "",
        provenance(command, {arm: arm_settings(ARMS[arm]) if arm in ARMS else LOCAL_SETTINGS for arm in present}),
        "",
        f"{seeds} seeds per arm, {at_a_time}, arms interleaved per seed. Evaluation: the policy alone, no bias, "
        "sampled actions, 32 held-out seeds; reached = two consecutive evaluations >= 0.8, counted at the first. Env "
        "steps are exact (stamped by the learner on each version). IQM over seeds with a 95% stratified bootstrap "
        "interval. Ratios: the geometric mean of per-seed ratios of env steps to 0.8 against the baseline's run on "
        "the same seed, 95% interval; against `plain` (no advisor) and against `null` (an advisor whose advice is a "
        "zero bias, so its batches count as advised and get the advised normaliser floor: the ratio to `null` is "
        "the advice's own effect). P(fewer): the probability that a run of the arm needs fewer env steps than a "
        "`plain` run. `>=`: a run that never reached 0.8 counts at the env steps it ran, so the figure is a lower "
        "bound (`<=` an upper bound; `?` bounds that point both ways). Final return: the last evaluation, at the "
        "budget; `-` for runs stopped at the threshold. Precision: advised steps whose favourite action is the "
        "planner's for the state the bot was in (judged steps in brackets). Calls: backend calls per run (median).",
        "",
    ]
    for env_id in sorted({r.env_id for r in runs}):
        budget = budgets[env_id]
        plain = [r for r in runs if r.env_id == env_id and r.arm == "plain"]
        null = [r for r in runs if r.env_id == env_id and r.arm == "null"]
        lines += [
            f"## {env_id} (budget {budget:,} env steps)",
            "",
            "| arm | reached 0.8 | IQM env steps (95% CI) | vs plain (95% CI) | P(fewer than plain) | IQM seconds | "
            "vs null (95% CI) | final return | precision | state-advised steps | calls | per seed (ratio to plain) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for arm in ALL_ARMS:
            arm_runs = [r for r in runs if r.env_id == env_id and r.arm == arm]
            if not arm_runs:
                continue
            cells = comparison_cells(arm_runs, plain)
            versus_null = geometric_mean_ratio(paired_ratios(arm_runs, null)).show() if null else "-"
            share = statistics.median(
                [r.scraped.get("biased_state_steps", 0.0) / max(1.0, r.scraped.get("env_steps", 0.0)) for r in arm_runs]
            )
            calls = statistics.median(r.scraped.get("backend_calls", 0.0) for r in arm_runs)
            lines.append(
                f"| {arm} | {' | '.join(cells)} | {versus_null} | {final_return_cell(arm_runs)} | "
                f"{precision(arm_runs)} | {share:.1%} | {calls:,.0f} | {steps_per_seed(arm_runs, plain)} |"
            )
        lines += ["", *withdrawal_table([r for r in runs if r.env_id == env_id])]
    return "\n".join(lines)


def withdrawal(run: Run) -> tuple[int | None, int | None] | None:
    """The env steps at which a scheduled bias strength was first seen at half its start and at 0 (None: not yet);
    None for a run whose strength never moved (no schedule, or no router)."""
    strengths = [(steps, values["strength"]) for steps, values in run.series if "strength" in values]
    seen = [strength for _, strength in strengths]
    if len(seen) < 2 or min(seen) == max(seen):
        return None
    start = max(seen)
    half = next((steps for steps, v in strengths if v <= start / 2), None)
    zero = next((steps for steps, v in strengths if v <= 0), None)
    return half, zero


def evaluation_at(run: Run, env_steps: int | None) -> str:
    """The last evaluation return at or before `env_steps`."""
    if env_steps is None:
        return "-"
    returns = [value for steps, _, value in run.curve if steps <= env_steps]
    return f"{returns[-1]:.2f}" if returns else "-"


def withdrawal_table(runs: list[Run]) -> list[str]:
    """Where the router's schedule annealed advice away: when, and what the policy alone scored then."""
    rows = []
    for run in sorted(runs, key=lambda r: (ALL_ARMS.index(r.arm) if r.arm in ALL_ARMS else 0, r.seed)):
        moments = withdrawal(run)
        if moments is None:
            continue
        half, zero = moments
        reached = f"{run.steps_to_threshold:,}" if run.steps_to_threshold is not None else "not reached"
        rows.append(
            f"| {run.arm} | {run.seed} | {f'{half:,}' if half else '-'} | {evaluation_at(run, half)} |"
            f" {f'{zero:,}' if zero else '-'} | {evaluation_at(run, zero)} | {reached} |"
        )
    if not rows:
        return []
    return [
        "Advice annealed by the router's schedule (strength read at every evaluation): the env steps at which the"
        " bias strength was first seen at half its start and at 0, and the evaluation return (advice off) then.",
        "",
        "| arm | seed | strength at half | evaluation then | strength at 0 | evaluation then | reached 0.8 at |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r.env_id for r in runs})
    fig, axes = plt.subplots(3, len(envs), figsize=(7 * len(envs), 12.5), squeeze=False)
    for axis, trust_axis, profile_axis, env_id in zip(axes[0], axes[1], axes[2], envs, strict=True):
        plot_reached_by(profile_axis, [r for r in runs if r.env_id == env_id])
        plot_curves(axis, runs, env_id, ALL_ARMS)
        axis.set(title=f"{env_id}: scored with advice off", xlabel="env steps", ylabel="evaluation return")
        for index, arm in enumerate(ARMS):
            for run in [r for r in runs if r.env_id == env_id and r.arm == arm and r.series]:
                steps = [point[0] for point in run.series]
                trust = [point[1].get("trust", np.nan) for point in run.series]
                trust_axis.plot(steps, trust, color=f"C{index}", alpha=0.6, label=arm if run.seed == 1 else None)
                if withdrawal(run) is not None:  # a schedule: its strength relative to its start, dashed
                    strength = np.array([point[1].get("strength", np.nan) for point in run.series])
                    trust_axis.plot(steps, strength / np.nanmax(strength), color=f"C{index}", alpha=0.6, ls="--")
        trust_axis.set(
            title="router trust per advisor (each seed); dashed: scheduled strength / its start",
            xlabel="env steps",
            ylabel="trust",
            ylim=(-0.05, 1.05),
        )
        trust_axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_reached_by(axis: Any, runs: list[Run]) -> None:
    """A performance profile over env steps: the share of each arm's seeds that had reached 0.8 (two consecutive
    evaluations) by then. Censored runs never count, so a curve that stays under 1 shows them."""
    for arm in ALL_ARMS:
        arm_runs = [r for r in runs if r.arm == arm]
        if not arm_runs:
            continue
        reached = sorted(r.steps_to_threshold for r in arm_runs if r.steps_to_threshold is not None)
        end = max((r.curve[-1][0] for r in arm_runs if r.curve), default=0)
        xs = [0, *reached, end]
        ys = [0.0, *[(i + 1) / len(arm_runs) for i in range(len(reached))], len(reached) / len(arm_runs)]
        axis.step(xs, ys, where="post", label=f"{arm} ({len(reached)}/{len(arm_runs)})")
    axis.set(title="share of seeds that reached 0.8", xlabel="env steps", ylabel="share of seeds", ylim=(-0.05, 1.05))
    axis.legend(fontsize=8)


def main(
    envs: Annotated[list[str] | None, typer.Option(help="Environments (default: DoorKey-5x5).")] = None,
    arms: Annotated[list[str] | None, typer.Option(help=f"Arms (default: {DEFAULT_ARMS}; all: {ALL_ARMS}).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per arm.")] = 5,
    first_seed: Annotated[int, typer.Option(help="The first seed.")] = 1,
    stop_at_threshold: Annotated[
        bool, typer.Option(help="End a run at evaluation 0.8 instead of the budget (faster; no final return).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Markdown report; PNG and JSON beside it.")] = Path(
        "benchmarks/results/learning-value.md"
    ),
    max_steps: Annotated[int | None, typer.Option(help="Env-step budget per run (default: BUDGET's).")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Seconds per run (default: BUDGET's).")] = None,
    parallel: Annotated[
        int, typer.Option(help="Runs at a time: 1 on a laptop; on a many-core machine each stack needs ~2 cores.")
    ] = 1,
) -> None:
    env_ids = envs or ["MiniGrid-DoorKey-5x5-v0"]
    chosen = arms or list(DEFAULT_ARMS)
    unknown = set(chosen) - set(ALL_ARMS)
    if unknown:
        raise typer.BadParameter(f"unknown arms {sorted(unknown)}; choose from {list(ARMS)}")
    budgets = {}
    for env_id in env_ids:
        steps, seconds = BUDGET.get(env_id, DEFAULT_BUDGET)
        budgets[env_id] = (max_steps or steps, max_seconds or seconds)
    jobs = [  # arms interleaved per seed, so that machine noise spreads over every arm alike
        (env_id, arm, seed) for env_id in env_ids for seed in range(first_seed, first_seed + seeds) for arm in chosen
    ]
    command = "python -m benchmarks.learning_value " + " ".join(sys.argv[1:])
    runs: list[Run] = []
    out.parent.mkdir(parents=True, exist_ok=True)

    def run_one(job: tuple[str, str, int]) -> Run:
        env_id, arm, seed = job
        if arm == LOCAL:
            run = run_local(env_id, seed, budgets[env_id][0])
        else:
            run = run_stack(env_id, arm, seed, *budgets[env_id], ARMS[arm], stop_at_threshold)
        print(f"{env_id} {arm} seed {seed}: {run.steps_to_threshold} steps, {run.scraped}", flush=True)
        return run

    with ThreadPoolExecutor(max_workers=parallel) as pool:  # each run is its own processes: threads only wait
        for run in pool.map(run_one, jobs):
            runs.append(run)
            if parallel > 1:  # a run cut short (a device's time limit) keeps what finished
                out.with_suffix(".partial.json").write_text(json.dumps([asdict(r) for r in runs]))
    save(runs, report(runs, seeds, command.strip(), {e: b[0] for e, b in budgets.items()}, parallel), out, plot)
    out.with_suffix(".partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    typer.run(main)
