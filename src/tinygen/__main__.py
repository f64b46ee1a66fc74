"""`python -m tinygen` is the same as the `tinygen` command."""

from tinygen.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
