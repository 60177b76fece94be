"""The `infermeter` command line: one module per command group, each verb one library call.

- main.py     the app, --version, and every group registered (entry point infermeter.cli.main:app)
- console.py  consoles, say/out/show, print_fit, progress, user_errors (exit codes 2, 130, 143)
- options.py  `request`: a command's options from its dataclass in infermeter.requests
- profile.py  models, hardware, profile          (plans.profile_setup, ProfileSetup.run)
- fit.py      fit, estimate, runs, show, export  (model.runfit, model.pricing.price_request)
- api.py      serve, load, variance              (backends.serve, plans.run_load, model.variance)
- energy.py   energy                             (plans.energy_setup, EnergySetup.run)
- report.py   tradeoffs, compare, report         (model.tradeoffs, model.compare, report.build)
- sweep.py    sweep, merge                       (experiments.sweep, store.merge)

console.py imports nothing else from infermeter.cli, so no group imports back from main.
"""
