"""The `/v1` API (SPEC §7): request and answer models, the watch and delivery handlers, the route table."""
