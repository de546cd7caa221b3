"""The rules engine: live conditions on monitor events become signed commands and alerts.

``spec`` reads and validates the rules file, ``core`` evaluates events (sans-I/O), ``actions``
turns fires into records, ``engine`` is the Kafka edge and ``cli`` the ``convostream rules``
command. Imports ``schemas`` and ``convostream`` only.
"""
