"""`omoide twitch login`: Twitch's device code flow, for a program with no web page of its own.

The user opens twitch.tv/activate, types the code shown, and approves the scopes; we poll for the
token, validate it to learn the account's id, and store it with the others in the token file
(mode 0600). Tokens are never printed or logged.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plugins.chat_twitch import TwitchAccount, TwitchError, load_account, save_account

BOT_SCOPES = ("user:read:chat", "user:write:chat", "user:bot")
EVENT_SCOPES = {"cheer": "bits:read", "subscription": "channel:read:subscriptions",
                "gift": "channel:read:subscriptions", "redemption": "channel:read:redemptions",
                "follow": "moderator:read:followers"}


def broadcaster_scopes(events: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(["channel:bot", *(EVENT_SCOPES[e] for e in events if e in EVENT_SCOPES)]))


def _post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=15) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _validate(auth_url: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{auth_url}/oauth2/validate", headers={"Authorization": f"OAuth {token}"})
    with urllib.request.urlopen(req, timeout=15) as r:
        return dict(json.loads(r.read()))


def device_login(auth_url: str, client_id: str, scopes: Sequence[str], show: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep) -> tuple[str, str, str, str]:
    """(user id, login, access token, refresh token) once the user has approved."""
    status, start = _post(f"{auth_url}/oauth2/device", {"client_id": client_id, "scopes": " ".join(scopes)})
    if status != 200:
        raise TwitchError(f"Twitch refused to start the login ({status}: {start.get('message', '')});"
                          " check twitch.client_id and that the app is a public client")
    show(f"Open {start['verification_uri']} and enter the code {start['user_code']}"
         f" (scopes: {' '.join(scopes)}).")
    deadline = time.monotonic() + float(start.get("expires_in", 1800))
    interval = float(start.get("interval", 5))
    while time.monotonic() < deadline:
        sleep(interval)
        status, got = _post(f"{auth_url}/oauth2/token", {
            "client_id": client_id, "scopes": " ".join(scopes), "device_code": start["device_code"],
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code"})
        if status == 200:
            who = _validate(auth_url, got["access_token"])
            return str(who["user_id"]), str(who.get("login", "")), got["access_token"], got.get("refresh_token", "")
        if got.get("message") not in ("authorization_pending", "slow_down"):
            raise TwitchError(f"Twitch login failed: {got.get('message') or status}")
    raise TwitchError("the login code expired before it was approved; run `omoide twitch login` again")


def login(token_file: Path, auth_url: str, client_id: str, role: str, events: Sequence[str],
          show: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> TwitchAccount:
    """Log in the bot or the broadcaster account and store its tokens beside the others."""
    if not client_id:
        raise TwitchError("set twitch.client_id (your application at dev.twitch.tv/console) or pass --client-id")
    scopes = BOT_SCOPES if role == "bot" else broadcaster_scopes(events)
    user_id, name, token, refresh = device_login(auth_url, client_id, scopes, show, sleep)
    try:
        account = load_account(token_file)
    except TwitchError:
        account = TwitchAccount(client_id=client_id, bot_id="", bot_token="")
    if role == "bot":
        account = dataclasses.replace(account, client_id=client_id, bot_id=user_id, bot_token=token,
                                      bot_refresh=refresh)
    else:
        account = dataclasses.replace(account, client_id=client_id, broadcaster_id=user_id,
                                      broadcaster_token=token, broadcaster_refresh=refresh)
    save_account(token_file, account)
    show(f"logged in as {name} ({role}); tokens saved to {token_file} (readable by you alone)")
    return account
