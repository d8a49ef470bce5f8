"""``python -m dartboard.platform.cli``: the same as the ``dartboard`` console script."""

from dartboard.platform.cli.main import main

main()
