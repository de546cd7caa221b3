"""The command path: services steer live conversations through ``convai.commands``.

Sans-I/O cores (``validate``, ``signing``, ``policy``, ``ratelimit``, ``ledger``, ``frames``,
``decide``) take values and return values; ``upstream``, ``pool``, ``worker`` and ``client`` do
the I/O around them. ``cli`` holds ``convostream command-worker`` and ``send-command``.
"""
