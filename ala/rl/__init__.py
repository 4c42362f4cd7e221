"""ALA's one RL core, with no NATS in it: the actor-critic (`policy`), PPO and importance-weight maths (`ppo`),
trajectories and their checks (`trajectory`), the N-bot rollout (`rollout`), the learner (`learner`) and their
settings (`config`). `ala train --local` runs them in one process (`local`); the actor and learner services run
the same code across processes.

This package's `__init__` imports nothing, so a torch-free module (`trajectory`) can be used without torch.
"""
