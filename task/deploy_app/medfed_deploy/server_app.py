"""The coordinator's ServerApp: the job `medfed run` describes in the run config."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.deploy_run import run_job

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federated job of ``context.run_config`` to its evidence."""
    run_job(grid, dict(context.run_config), lambda line: print(line, flush=True))
