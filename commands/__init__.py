"""The command path: services steer live conversations through ``convai.commands``.

Sans-I/O cores (``validate``, ``policy``, ``keyring``, ``ratelimit``, ``ledger``, ``frames``,
``decide``; signatures in ``schemas.signing``) take values and return values; ``pool``,
``intents``, ``worker`` and ``client`` do the I/O around them (the upstream through the
``upstream`` package). ``cli`` holds ``convostream command-worker`` and ``send-command``.
"""
