"""Groups of CLI commands kept out of infermeter.cli; each module has `register(app)`."""
