"""Everything infermeter keeps on disk; the only package that holds SQL.

- db.py         Store: the SQLite file of runs, points, power samples and fits
- schema.py     the schema version and its numbered migrations, applied when a store opens
- energy.py     the Words-to-Watts tables: configurations, batches, responses
- merge.py      stores from several machines merged into one
- ownership.py  one process per run (an fcntl lock on the store's lock file)
- provenance.py the commit and versions recorded with every run
- outputs.py    output files checked before the work and written in one step
"""
