"""The HTTP API (SPEC §7, §8): the aiohttp application, what its handlers read (`state`), problem+json
and auth, the `/v1` routes, the OpenAPI document and the status page."""
