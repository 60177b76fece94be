"""What infermeter shows: the HTML report of both papers' figures, the figure functions it is
made of, and the terminal's tables and progress bars.

    from infermeter.report.build import ReportInputs, build_report
    build_report(ReportInputs(stores=[Path("infermeter.sqlite")])).write("report.html")

- build.py     the report's sections from stores, fitted models and accuracy tables
- html.py      one self-contained HTML page; plot.py the shared matplotlib style
- runtime_figs.py, energy.py, load_figs.py, moe_figs.py, tradeoff_figs.py  the figures
- written.py   figures written outside the page (tradeoffs, compare)
- tables.py    rich tables of frames and fits for a terminal or notebook (no matplotlib)
- progress.py  a rich progress bar driven by an experiment's callbacks

Nothing is imported here, so a terminal table does not load matplotlib.
"""
