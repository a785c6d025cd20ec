"""``python -m chronicle …``: the ``chronicle`` command."""

from chronicle.cli import main

main()
