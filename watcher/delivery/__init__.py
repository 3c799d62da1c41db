"""Webhook delivery: the worker that drains the outbox (`worker`), its retry policy (`retry`), one signed
POST classified (`webhook`, `signing`) and the bodies it sends (`bodies`)."""
