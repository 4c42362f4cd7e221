"""The learner: trains PPO with exact off-policy correction and publishes versioned weights."""
