"""`infermeter energy`: the Words-to-Watts experiment (infermeter.experiments.energy)."""

from __future__ import annotations

import typer

from infermeter import requests as rq
from infermeter.cli import options as o
from infermeter.cli.console import console, err_console, progress, show, user_errors
from infermeter.units import plural


def register(app: typer.Typer) -> None:
    """Add `energy` to `app`."""
    app.command("energy")(user_errors(energy))


@o.request(rq.EnergyRequest)
def energy(r: rq.EnergyRequest) -> None:
    """Energy per second, token and response of dataset prompts (Words to Watts)."""
    from infermeter.engine.launcher import serve_if_follower

    launched = serve_if_follower()  # under torchrun/srun: ranks other than 0 serve, then exit
    from infermeter.experiments.energy import config_problems, summary
    from infermeter.experiments.plans import energy_setup, restore_power_limits
    from infermeter.store.db import Store

    if r.restore_power_limit:
        for line in restore_power_limits(r):
            console.print(line, highlight=False)
        return
    setup = energy_setup(r, launched.nodes if launched else 1)
    spec, workload = setup.spec, setup.workload

    def note(text: str) -> None:
        err_console.print(f"[yellow]note:[/] {text}", highlight=False)

    for line in setup.notes:
        note(line)
    title = f"energy of {spec.name} on {workload.dataset}"
    with Store(r.store) as db, progress(title) as bar:
        result = setup.run(db, r, bar, note)
    for line in result.notes[len(workload.notes) :]:
        note(line)
    console.print(f"run {result.run.id} stored in {r.store} ({result.run.device})", highlight=False)
    configs = result.configs
    title = (
        f"{spec.name} on {workload.dataset}: {plural(len(workload), 'prompt')} per configuration"
    )
    show(summary(configs), title, digits=4)
    for line in config_problems(configs):
        console.print(line)
