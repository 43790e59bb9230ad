"""The driver: the only orchestration code. Starts Ray, places actors, runs the training loop."""
