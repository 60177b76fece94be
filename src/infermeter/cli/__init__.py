"""The `infermeter` command line: one module per command group, each verb one library call."""
