"""`python -m camseg` runs the CLI."""

from camseg.cli import main

main()
