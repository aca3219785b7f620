"""medfed's Flower app entry points for the deployment runtime (see pyproject.toml)."""
