"""Polling: when to poll (`policy`), the scheduler that polls every due watch (`scheduler`, `writer`,
`errorlog`), the upstream client (`upstream`) and the shared rate limit (`ratelimit`)."""
