"""The coordinator: the Flower ServerApp, strategies, rounds, cross-site evaluation,
checkpoints and the records of a run."""
