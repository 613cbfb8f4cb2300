"""Training: optimisers and schedules, losses, the pure steps and the loop."""
