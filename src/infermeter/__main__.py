"""`python -m infermeter`: the same command line as the `infermeter` script."""

from infermeter.cli.main import app

if __name__ == "__main__":
    app(prog_name="infermeter")
