"""Everything that talks to the ElevenLabs API: REST calls, URLs, monitor sockets, back-off.

Collectors (``ingest``), command workers (``commands``), the rules engine and the backfill
(``postcall``) reach the upstream only through this package.

One error type, :class:`upstream.rest.UpstreamError` (a ``ConnectionError``), whose
``retriable`` flag says whether asking again later may help::

    ConnectionError
    └── UpstreamError(retriable)
        ├── REST, after the retry policy's tries (rest)      retriable: network, 429, 5xx
        ├── an answer that will not change (conversations,   not retriable: 401, 403,
        │   ingest.discovery)                                 unexpected status or body
        └── a monitor socket that cannot open or breaks      not retriable: handshake 401, 403,
            (websocket.opened)                                404, malformed URL; else retriable

The monitor's reconnect policy (``ingest.monitor``) decides by the flag: a retriable failure
reconnects with back-off, asking REST after a few in a row; one that is not asks REST at once
and, while the conversation is live, is a gap and an alarm like a close 1008. The other roots
with the same flag: ``schemas.errors.SerdeError`` (the registry retries what is retriable) and
aiokafka's ``KafkaError`` (the collector's publisher offers a batch again when it is).
"""
