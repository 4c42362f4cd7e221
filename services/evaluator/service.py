"""The evaluator process: every newest policy version, alone (no bias), on held-out env seeds.

It follows weights announcements, which carry the policy spec (so it builds the right environments) and the exact env
steps behind the version (counted by the learner from the chunks it trained on, so a curve's x axis is the version's
own, not a heartbeat's seconds-old reading); it fetches the weights like an actor, scores them with sampled and greedy
actions in a worker thread, and publishes an `Evaluation` on `ala.<run>.eval` and
`ala_eval_return{mode}`. When versions come faster than evaluations, it skips to the newest (counted). It runs
niced (`nice` setting), so on a shared machine it takes only CPU that actors and learner leave.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from pathlib import Path

import torch
from nats.aio.msg import Msg

from ala.bus import Bus
from ala.envs import EnvAdapter, adapter_for
from ala.progress import report_progress
from ala.ratelimit import RateLimitedLog
from ala.rejection import Rejected
from ala.rl.evaluate import evaluate, record_episode
from ala.rl.policy import Agent
from ala.rl.saved import SavedPolicy, load_policy, save_policy
from ala.service import ServiceRuntime, ServiceTasks, run_until_signalled
from ala.tensorboard import Scalars
from ala.weights import NewestVersion, fetch_policy
from protos import Evaluation, WeightsAnnouncement, WireError, decode, subjects
from services.evaluator import metrics
from services.evaluator.settings import EvaluatorSettings

log = logging.getLogger(__name__)


class Evaluator:
    def __init__(self, settings: EvaluatorSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.newest = NewestVersion()
        """The newest announcement to evaluate."""
        self.last: Evaluation | None = None
        self.evaluations = 0
        self._log = RateLimitedLog(log)
        self.scalars = Scalars(settings.tensorboard_dir, settings.run, f"evaluator-{settings.instance}")
        self.best_path = settings.best_dir / settings.run / "best.pt" if settings.best_dir else None
        self.best_return = best_return(self.best_path)

    async def on_weights(self, msg: Msg) -> None:
        try:
            announcement = decode(msg.data, WeightsAnnouncement)
        except WireError:
            metrics.SKIPPED.labels("decode").inc()
            return
        waiting = self.newest.wanted
        newest = waiting.version if waiting else (self.last.policy_version if self.last else -1)
        if announcement.version % self.settings.every_versions or announcement.version <= newest:
            return  # not a version to score, or a progress re-announcement of one already seen
        if self.newest.offer(announcement):
            metrics.SKIPPED.labels("behind").inc()

    async def run(self) -> None:
        while True:
            announcement = await self.newest.next()
            try:
                await self.score(announcement)
            except Rejected as exc:
                metrics.SKIPPED.labels(exc.reason).inc()
                self._log.warning("version %d not evaluated (%s): %s", announcement.version, exc.reason, exc)
            await asyncio.sleep(self.settings.min_interval_s)

    async def score(self, announcement: WeightsAnnouncement) -> None:
        env_steps = announcement.env_steps
        spec = announcement.policy
        if spec is None:
            raise Rejected("no_spec", "the announcement names no policy spec")
        agent = await fetch_policy(self.bus, announcement, spec, torch.device("cpu"))
        adapter = adapter_for(spec.env_id)
        result = await asyncio.to_thread(
            evaluate,
            agent,
            adapter,
            self.settings.episodes,
            self.settings.seed,
            self.settings.greedy,
        )
        greedy = result.greedy or result.sampled  # without greedy play, greedy fields repeat the sampled ones
        self.last = Evaluation(
            run=self.settings.run,
            policy_version=announcement.version,
            env_steps=env_steps,
            episodes=result.episodes,
            mean_return=result.sampled.mean_return,
            success_rate=result.sampled.success_rate,
            greedy_return=greedy.mean_return,
            greedy_success_rate=greedy.success_rate,
            seconds=result.seconds,
            created_at=time.time(),
        )
        for mode, score in (("sampled", result.sampled), ("greedy", result.greedy)):
            if score is None:
                continue
            metrics.RETURN.labels(mode).set(score.mean_return)
            metrics.SUCCESS_RATE.labels(mode).set(score.success_rate)
        metrics.POLICY_VERSION.set(announcement.version)
        metrics.ENV_STEPS.set(env_steps)
        metrics.EVALUATIONS.inc()
        metrics.SECONDS.observe(result.seconds)
        await self.bus.publish(subjects.evaluation_subject(self.settings.run), self.last, kind="evaluation")
        self.chart(self.last, scored_greedy=result.greedy is not None)
        await self.keep_if_best(agent, self.last)
        self.evaluations += 1
        if self.settings.video_dir is not None and (self.evaluations - 1) % self.settings.video_every == 0:
            await self.record(agent, announcement.version, adapter)

    def chart(self, e: Evaluation, scored_greedy: bool) -> None:
        """The evaluation as TensorBoard scalars at the env steps behind the version (when `tensorboard_dir` is set)."""
        scalars = {"mean_return": e.mean_return, "success_rate": e.success_rate, "seconds": e.seconds}
        if scored_greedy:
            scalars |= {"greedy_return": e.greedy_return, "greedy_success_rate": e.greedy_success_rate}
        self.scalars.add(scalars | {"policy_version": e.policy_version}, e.env_steps, prefix="eval")
        self.scalars.flush()  # an evaluation every few seconds at most: each is seen at once

    async def record(self, agent: Agent, version: int, adapter: EnvAdapter) -> None:
        """One held-out episode of `version` as a video (the first evaluation's, then every `video_every`-th); a
        video that cannot be written is counted and logged, and evaluation goes on."""
        assert self.settings.video_dir is not None
        path = self.settings.video_dir / self.settings.run / f"v{version:06d}.mp4"
        try:
            await asyncio.to_thread(record_episode, agent, adapter, path, self.settings.seed)
        except Exception as exc:  # an encoder or a disk can fail in many ways; scoring must go on
            metrics.VIDEOS.labels("failed").inc()
            self._log.warning("no video of v%d: %s: %s", version, type(exc).__name__, exc)
            return
        metrics.VIDEOS.labels("written").inc()
        log.info("video of v%d: %s", version, path)

    async def keep_if_best(self, agent: Agent, e: Evaluation) -> None:
        """Keep the version as best.pt when its sampled return beats every one before it (as SB3's EvalCallback
        keeps `best_model`); a write that fails is counted and logged, and evaluation goes on."""
        if self.best_path is None or e.mean_return <= self.best_return:
            return
        scores = {"mean_return": e.mean_return, "success_rate": e.success_rate, "greedy_return": e.greedy_return}
        try:
            await asyncio.to_thread(
                save_policy, self.best_path, SavedPolicy(agent, e.policy_version, e.env_steps, scores)
            )
        except OSError as exc:  # a later, better version tries again
            metrics.BEST_SAVE_FAILURES.inc()
            self._log.warning("the best version v%d not kept: %s", e.policy_version, exc)
            return
        self.best_return = e.mean_return
        metrics.BEST_RETURN.set(e.mean_return)
        log.info("v%d is the best so far (return %.3f): %s", e.policy_version, e.mean_return, self.best_path)

    def progress(self) -> str:
        """The evaluator's console line (every few seconds, see `ala.progress`)."""
        e = self.last
        if e is None:
            return "waiting for weights"
        return (
            f"policy v{e.policy_version} at {e.env_steps:,} env steps: eval return {e.mean_return:.3f} "
            f"(greedy {e.greedy_return:.3f}), success {e.success_rate:.0%} over {e.episodes} held-out seeds "
            f"in {e.seconds:.1f}s"
        )


def best_return(path: Path | None) -> float:
    """The sampled return of the best version kept so far for this run (a restarted evaluator keeps only a better
    one); -inf when there is none, or the file cannot be read (logged: it will be replaced)."""
    if path is None or not path.exists():
        return -math.inf
    try:
        return load_policy(path).evaluation.get("mean_return", -math.inf)
    except ValueError as exc:
        log.warning("the best policy kept so far cannot be read, the next evaluation replaces it: %s", exc)
        return -math.inf


async def serve(settings: EvaluatorSettings, stop: asyncio.Event) -> None:
    torch.set_num_threads(settings.torch_threads)
    async with ServiceRuntime(settings, metrics.SERVICE, metrics.REGISTRY) as runtime, ServiceTasks() as tasks:
        evaluator = Evaluator(settings, runtime.bus)
        try:
            await runtime.bus.subscribe(subjects.weights_subject(settings.run), evaluator.on_weights)
            tasks.start(evaluator.run(), name="evaluate")
            tasks.start(report_progress("evaluator", evaluator.progress, settings.progress_interval_s), name="progress")
            await stop.wait()
            await tasks.stop_all()
        finally:
            evaluator.scalars.close()


def main() -> None:
    settings = EvaluatorSettings()
    os.nice(settings.nice)
    run_until_signalled(serve, settings)
