"""``python -m convostream`` is the ``convostream`` command."""

from convostream.cli import main

main()
