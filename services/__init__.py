"""ALA's four services, one folder each: advisor, router, actor, learner."""

SERVICE_NAMES = ("advisor", "router", "actor", "learner")
