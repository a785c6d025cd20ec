"""``python -m chronicle.cli …``: the ``chronicle`` command."""

from chronicle.cli import main

main()
