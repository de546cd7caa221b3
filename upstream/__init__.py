"""Everything that talks to the ElevenLabs API: REST calls, URLs, monitor sockets, back-off.

Collectors (``ingest``), command workers (``commands``), the rules engine and the backfill
(``postcall``) reach the upstream only through this package.
"""
