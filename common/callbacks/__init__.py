"""Job callbacks: where they may connect (``policy``) and the client that delivers them
(``transport``). The API imports only the policy; the notify worker both."""

from common.callbacks.policy import (
    DEFAULT_PORTS,
    CallbackPolicy,
    CallbackRefused,
    check_callback_url,
    resolve,
)

__all__ = ["DEFAULT_PORTS", "CallbackPolicy", "CallbackRefused", "check_callback_url", "resolve"]
