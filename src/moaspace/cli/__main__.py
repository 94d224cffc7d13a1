"""``python -m moaspace.cli``: the same as the ``moaspace`` console script."""

from moaspace.cli import main

main()
