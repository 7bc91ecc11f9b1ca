"""`python -m coord.cli`: the same as the `coord` command."""

from coord.cli.main import main

main()
