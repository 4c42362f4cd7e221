"""ALA's services, one folder each: advisor, router, actor, learner, and the evaluator that scores the policy."""

SERVICE_NAMES = ("advisor", "router", "actor", "learner", "evaluator")
