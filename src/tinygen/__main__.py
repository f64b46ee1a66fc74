"""`python -m tinygen` is the same as the `tinygen` command."""

from tinygen.cli.main import entry

if __name__ == "__main__":
    entry()
