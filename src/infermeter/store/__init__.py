"""Everything infermeter keeps on disk.

- db.py         Store: the SQLite file of runs, points, power samples and fits
- ownership.py  one process per run (an fcntl lock on the store's lock file)
- provenance.py the commit and versions recorded with every run
- outputs.py    output files checked before the work and written in one step
"""
