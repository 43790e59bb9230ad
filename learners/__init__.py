"""The learner actor (updates the policy, generates its own chunk) and the reference actor."""
