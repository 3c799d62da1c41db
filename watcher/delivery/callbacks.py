"""Per-watch callbacks at delivery time (SPEC §13): each callback delivery's target, and the guarded sender.

A callback delivery carries its own copy of the callback (URL and headers, stored with it), so it goes out
even after its watch is deleted. Its target is the `[callbacks]` section's signing and retry settings with
that URL and those headers, always format `standard`. Before every attempt the URL is checked again against
the current guard (a literal address, the scheme), and the connection itself goes through the guarded
connector of `sender`'s session, which checks the address actually connected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from watcher.delivery.guard import AddressGuard, CallbackUrlError
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import WebhookSender
from watcher.models import CALLBACK, Delivery


@dataclass(frozen=True)
class CallbackTargets:
    """How callback deliveries go out: `template` (no URL) made concrete per delivery, sent by `sender`."""

    guard: AddressGuard
    template: WebhookTarget
    sender: WebhookSender

    @classmethod
    def build(
        cls,
        guard: AddressGuard,
        sender: WebhookSender,
        *,
        secrets: tuple[str, ...],
        **settings: Any,
    ) -> CallbackTargets:
        """The callback targets of one `[callbacks]` configuration; `settings` are `WebhookTarget` fields
        (timeouts, retries, breaker, age, concurrency per endpoint)."""
        template = WebhookTarget(
            name=CALLBACK, url="", secrets=secrets, events=frozenset(), format="standard", **settings
        )
        return cls(guard, template, sender)

    def target_for(self, delivery: Delivery) -> WebhookTarget | str:
        """The target of one callback delivery, or why it may not go out (a `blocked_address` reason)."""
        callback = delivery.callback
        if callback is None:
            return "callback delivery without a stored callback"
        try:
            self.guard.check_url(callback.url)
        except CallbackUrlError as exc:
            return f"blocked address: callback URL {exc}"
        return replace(self.template, url=callback.url, headers=dict(callback.headers))
