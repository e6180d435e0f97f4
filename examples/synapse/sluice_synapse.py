"""Synapse module asking sluice before registrations, logins, invites,
joins and sent events.

Install: copy this file onto Synapse's PYTHONPATH and add to homeserver.yaml

    modules:
      - module: sluice_synapse.SluiceModule
        config:
          url: "http://127.0.0.1:8470"   # sluice serve
          timeout_s: 0.25                # sluice answers in well under a millisecond
          on_error: allow                # or deny: what to do when sluice fails
          # on_error may also be set per action, e.g. registrations closed
          # and everything else open while sluice is down:
          #   on_error: {default: allow, registration: deny}

Synapse's own rate limits stay in force; sluice adds per-IP limits that work
behind a load balancer (give Synapse `x_forwarded: true` on its listener so
`request_info` carries the real address), global limits, bans and autobans
shared across workers and homeservers.

A refusal is answered as Synapse's own rate limiter answers: HTTP 429,
`{"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": N}` and `Retry-After`,
with N from sluice's answer. The module raises `SynapseError` (stable module
API) from its callbacks; Synapse 1.163 passes it to the client unchanged
from every callback used here. See docs/deployment.md ("Synapse") for what
the module API cannot do (see failed logins, refuse a password attempt).

Failures of sluice (unreachable, slower than `timeout_s`, an answer that is
not a decision) follow `on_error`; a denial on error says to retry in 1 s,
as sluice itself does when its store fails. Client addresses are never
logged (sluice hashes them in its own logs).
"""

import json
import logging
import math
import urllib.error
import urllib.request
from typing import Any, Dict, Optional

from synapse.module_api import NOT_SPAM, ModuleApi
from synapse.module_api.errors import Codes, ConfigError, SynapseError
from synapse.spam_checker_api import RegistrationBehaviour

logger = logging.getLogger(__name__)

ACTIONS = ("registration", "login", "invite", "join", "send_event")
# What a denial on error tells the client to wait: sluice's own answer when
# its store is unavailable.
ERROR_RETRY_MS = 1000
# The longest answer read from sluice (its answers are a few hundred bytes).
MAX_ANSWER = 64 * 1024

MESSAGES = {
    "registration": "Too many registrations from this address",
    "login": "Too many logins",
    "invite": "Too many invites",
    "join": "Too many room joins",
    "send_event": "Too many messages",
}


class SluiceError(Exception):
    """sluice did not give a decision."""


def _parse_on_error(value: Any) -> Dict[str, bool]:
    """`allow`, `deny`, or a map of action (or `default`) to either: action → fail open?"""
    if isinstance(value, str):
        value = {"default": value}
    if not isinstance(value, dict):
        raise ConfigError("sluice: on_error must be allow, deny or a map of action to allow/deny")
    out: Dict[str, bool] = {}
    for key, v in value.items():
        if key != "default" and key not in ACTIONS:
            raise ConfigError(f"sluice: on_error: unknown action {key!r} (known: default, {', '.join(ACTIONS)})")
        if v not in ("allow", "deny"):
            raise ConfigError(f"sluice: on_error.{key} must be allow or deny, not {v!r}")
        out[key] = v == "allow"
    default = out.get("default", True)
    return {a: out.get(a, default) for a in ACTIONS}


def ask(url: str, body: dict, timeout: float) -> dict:
    """One POST /v1/check; the answer, or SluiceError. Blocking (run in a thread)."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = resp.status
            raw = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as e:
        raise SluiceError(f"HTTP {e.code}") from None
    except urllib.error.URLError as e:  # refused, unreachable, timed out connecting
        raise SluiceError(str(e.reason)) from None
    except Exception as e:  # noqa: BLE001 - reset, timed out reading, not HTTP: an outage
        raise SluiceError(str(e) or type(e).__name__) from None
    if status != 200:
        raise SluiceError(f"HTTP {status}")
    if len(raw) > MAX_ANSWER:
        raise SluiceError("answer too long")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise SluiceError("answer is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("allowed"), bool):
        raise SluiceError("answer has no boolean 'allowed'")
    retry = answer.get("retry_after_ms", 0)
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise SluiceError("answer has no valid 'retry_after_ms'")
    return answer


def limit_exceeded(action: str, retry_after_ms: int) -> SynapseError:
    """The error Synapse's own rate limiter raises (LimitExceededError), from the stable API."""
    return SynapseError(
        429,
        MESSAGES.get(action, "Too many requests"),
        Codes.LIMIT_EXCEEDED,
        additional_fields={"retry_after_ms": retry_after_ms},
        headers={"Retry-After": str(max(1, math.ceil(retry_after_ms / 1000)))},
    )


class SluiceModule:
    def __init__(self, config: dict, api: ModuleApi):
        self.api = api
        self.url = str(config.get("url", "http://127.0.0.1:8470")).rstrip("/") + "/v1/check"
        self.timeout = float(config.get("timeout_s", 0.25))
        self.fail_open = _parse_on_error(config.get("on_error", "allow"))
        api.register_spam_checker_callbacks(
            check_registration_for_spam=self.check_registration_for_spam,
            check_login_for_spam=self.check_login_for_spam,
            user_may_invite=self.user_may_invite,
            user_may_join_room=self.user_may_join_room,
            check_event_for_spam=self.check_event_for_spam,
        )

    @staticmethod
    def parse_config(config: dict) -> dict:
        if not isinstance(config, dict):
            raise ConfigError("sluice: config must be a map")
        _parse_on_error(config.get("on_error", "allow"))
        float(config.get("timeout_s", 0.25))
        return config

    async def _refuse(self, action: str, targets: Dict[str, Optional[str]]) -> None:
        """Raises the 429 when sluice (or on_error) says no; returns when allowed."""
        body = {"action": action, "side": "client", "targets": {k: v for k, v in targets.items() if v}}
        try:
            answer = await self.api.defer_to_thread(ask, self.url, body, self.timeout)
        except SluiceError as e:
            allow = self.fail_open[action]
            logger.warning("sluice failed (%s, %s): %s", action, "allowed" if allow else "denied", e)
            if allow:
                return
            raise limit_exceeded(action, ERROR_RETRY_MS) from None
        if answer["allowed"]:
            return
        # `limit` names the limit, `reason` says banned/blocked/limited: no address.
        logger.info("sluice denied %s: %s", action, answer.get("limit") or answer.get("reason"))
        raise limit_exceeded(action, answer["retry_after_ms"])

    async def check_registration_for_spam(
        self, email_threepid, username, request_info, auth_provider_id=None
    ) -> RegistrationBehaviour:
        # request_info: (user agent, address) of each request of the
        # registration's auth session; the first is where it started.
        ip = next((ip for _ua, ip in request_info), None)
        await self._refuse("registration", {"ip": ip})
        return RegistrationBehaviour.ALLOW

    async def check_login_for_spam(
        self, user_id, device_id, initial_display_name, request_info, auth_provider_id=None
    ):
        # Called only once the password (or token, or SSO) was accepted.
        ip = next((ip for _ua, ip in request_info), None)
        await self._refuse("login", {"ip": ip, "user": user_id})
        return NOT_SPAM

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str):
        await self._refuse("invite", {"user": inviter})
        return NOT_SPAM

    async def user_may_join_room(self, user: str, room: str, is_invited: bool):
        await self._refuse("join", {"user": user})
        return NOT_SPAM

    async def check_event_for_spam(self, event):
        # Also called for events arriving over federation: those are the
        # federation side's business (and raising here would reject them).
        sender = event.sender
        if not self.api.is_mine(sender):
            return NOT_SPAM
        await self._refuse("send_event", {"user": sender})
        return NOT_SPAM
