"""``python -m router`` is the ``agent-router`` command."""

from router.cli import main

main()
