"""Synapse module asking sluice before registrations, logins, invites,
joins and sent events.

Install: copy this file onto Synapse's PYTHONPATH and add to homeserver.yaml

    modules:
      - module: sluice_synapse.SluiceModule
        config:
          url: "http://127.0.0.1:8470"   # sluice serve
          timeout_s: 0.25                # sluice answers in well under a millisecond
          on_error: allow                # or deny: what to do when sluice is unreachable

Synapse's own rate limits stay in force; sluice adds per-IP limits that work
behind a load balancer (give Synapse `x_forwarded: true` on its listener so
`request_info` carries the real address), global limits, bans and autobans
shared across workers and homeservers.
"""

import json
import logging
from typing import Any, Optional, Tuple, Union

from synapse.module_api import ModuleApi, NOT_SPAM
from synapse.module_api.errors import Codes
from synapse.spam_checker_api import RegistrationBehaviour

logger = logging.getLogger(__name__)


class SluiceModule:
    def __init__(self, config: dict, api: ModuleApi):
        self.api = api
        self.url = config.get("url", "http://127.0.0.1:8470").rstrip("/")
        self.timeout = float(config.get("timeout_s", 0.25))
        self.fail_open = config.get("on_error", "allow") == "allow"
        api.register_spam_checker_callbacks(
            check_registration_for_spam=self.check_registration_for_spam,
            user_may_invite=self.user_may_invite,
            user_may_join_room=self.user_may_join_room,
            check_event_for_spam=self.check_event_for_spam,
        )

    @staticmethod
    def parse_config(config: dict) -> dict:
        return config

    async def _allowed(self, action: str, targets: dict, side: str = "client") -> bool:
        body = {"action": action, "side": side, "targets": {k: v for k, v in targets.items() if v}}
        try:
            answer = await self.api.http_client.post_json_get_json(f"{self.url}/v1/check", body)
        except Exception as e:  # noqa: BLE001 - any failure is an outage of sluice
            logger.warning("sluice unreachable (%s): %s", action, e)
            return self.fail_open
        if not answer.get("allowed", True):
            logger.info("sluice denied %s: %s", action, answer.get("limit") or answer.get("reason"))
            return False
        return True

    async def check_registration_for_spam(
        self, email_threepid, username, request_info, auth_provider_id=None
    ) -> RegistrationBehaviour:
        ip = next((ip for _ua, ip in request_info), None)
        ok = await self._allowed("registration", {"ip": ip})
        return RegistrationBehaviour.ALLOW if ok else RegistrationBehaviour.DENY

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str):
        ok = await self._allowed("invite", {"user": inviter})
        return NOT_SPAM if ok else Codes.LIMIT_EXCEEDED

    async def user_may_join_room(self, user: str, room: str, is_invited: bool):
        ok = await self._allowed("join", {"user": user})
        return NOT_SPAM if ok else Codes.LIMIT_EXCEEDED

    async def check_event_for_spam(self, event) -> Union[str, Tuple[Any, dict]]:
        sender = event.sender
        if not self.api.is_mine(sender):
            return NOT_SPAM
        ok = await self._allowed("send_event", {"user": sender})
        return NOT_SPAM if ok else Codes.LIMIT_EXCEEDED
