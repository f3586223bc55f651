"""``python -m cli`` is the ``agent-router`` command."""

from cli.app import main

main()
