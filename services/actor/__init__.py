"""The actor: runs many bots, adds the bias to the policy logits, samples and ships trajectories."""
