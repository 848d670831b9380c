"""API keys: who may call the gateway, and under which limits.

Keys come from two places, both optional:

* ``OPENAI_API_KEY``: one plaintext key (the simplest deployment: one shared key in compose), named
  ``default``; hashed at start so the plaintext is not kept around.
* ``API_KEYS_FILE``: a TOML file of many keys, stored only as SHA-256 hashes::

      [[keys]]
      name = "alice"            # shows up in logs and rate-limit keys
      sha256 = "9f86d08..."     # python -m gateway hash-key < key.txt
      rpm = 60                  # optional: requests per minute (0: unlimited)
      tpm = 100000              # optional: tokens per minute (0: unlimited)
      tiers = ["default", "flex"]   # optional: service tiers it may ask for (all)
      default_tier = "default"  # optional: the tier of `service_tier` auto/absent
      weight = 1                # optional: its fair share within a tier (0.1-1000)

Keys are enforced when ``OPENAI_API_KEY_REQUIRED=true`` or
``ENVIRONMENT=production``; with enforcement on and no key configured the
gateway refuses to start. A presented key is hashed and compared with every
configured hash by ``hmac.compare_digest``, so neither the comparison nor the
position of the match leaks through timing.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
from aiohttp import web

from gateway.errors import Unauthorized
from streamworker.protocol.outcomes import Tier

if TYPE_CHECKING:
    from gateway.errors import Handler, Middleware
    from gateway.settings import GatewaySettings

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
Sha256Hex = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$")]
Limit = Annotated[int, msgspec.Meta(ge=0)]
# Bounded below so deficit round robin gives every owner a job within ten
# rounds (lua/dispatch.lua), above so no key's share is all of a tier.
Weight = Annotated[float, msgspec.Meta(ge=0.1, le=1000)]
ALL_TIERS: tuple[Tier, ...] = tuple(Tier)

# Paths that never need a key: liveness for load balancers, and the API
# document (routed in development only). CORS preflights (OPTIONS) pass too:
# browsers send them without credentials.
OPEN_PATHS = frozenset({"/health", "/openapi.json"})
OPS_PATHS = frozenset({"/ready", "/metrics"})


class KeyringError(ValueError):
    """The key configuration cannot be used (bad file, or keys required but none)."""


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    name: Name
    sha256: Sha256Hex
    # None: the settings' default (RATE_LIMIT_RPM / RATE_LIMIT_TPM).
    rpm: Limit | None = None
    tpm: Limit | None = None
    # Scheduling: the service tiers the key may ask for, the one it gets when
    # it asks for none (or "auto"), and its weight among backlogged keys.
    tiers: tuple[Tier, ...] = ALL_TIERS
    default_tier: Tier = Tier.DEFAULT
    weight: Weight = 1.0

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ValueError(f"key {self.name}: tiers must name at least one tier")
        if self.default_tier not in self.tiers:
            raise ValueError(f"key {self.name}: default_tier {self.default_tier} is not in tiers")


class KeysFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    keys: list[ApiKey] = msgspec.field(default_factory=list)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def load_keys_file(path: str) -> list[ApiKey]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyringError(f"API_KEYS_FILE {path}: {exc.strerror}") from None
    try:
        keys = msgspec.toml.decode(data, type=KeysFile).keys
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise KeyringError(f"API_KEYS_FILE {path}: {exc}") from None
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise KeyringError(f"API_KEYS_FILE {path}: key names must be unique")
    return keys


class Keyring:
    def __init__(self, keys: list[ApiKey], *, enforced: bool) -> None:
        self.keys = keys
        self.enforced = enforced
        self._digests = [(bytes.fromhex(k.sha256), k) for k in keys]

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Keyring:
        keys: list[ApiKey] = []
        if settings.openai_api_key:
            keys.append(ApiKey(name="default", sha256=hash_key(settings.openai_api_key)))
        if settings.api_keys_file:
            keys.extend(load_keys_file(settings.api_keys_file))
        production = settings.environment == "production"
        enforced = settings.openai_api_key_required or production
        if enforced and not keys:
            why = "ENVIRONMENT=production" if production else "OPENAI_API_KEY_REQUIRED=true"
            raise KeyringError(f"{why} needs API keys: set OPENAI_API_KEY or API_KEYS_FILE")
        return cls(keys, enforced=enforced)

    def lookup(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        # Compare against every key, no early exit: the time taken does not
        # depend on which key (if any) matched.
        for stored, key in self._digests:
            if hmac.compare_digest(stored, digest):
                found = key
        return found


# The request's key (None: anonymous, allowed only when keys are not enforced).
API_KEY = "api_key"
_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


def owner_of(request: web.Request) -> str:
    """Who owns what this request creates: its key's name ("" without a key)."""
    key: ApiKey | None = request.get(API_KEY)
    return key.name if key is not None else ""


def bearer_token(request: web.Request) -> str | None:
    match = _BEARER.match(request.headers.get("Authorization", ""))
    return match.group(1) if match else None


def needs_key(request: web.Request, keyring: Keyring, *, ops_protected: bool) -> bool:
    if not keyring.enforced or request.method == "OPTIONS":
        return False
    if request.path in OPEN_PATHS:
        return False
    return ops_protected or request.path not in OPS_PATHS


def make_auth_middleware(keyring: Keyring, *, ops_protected: bool) -> Middleware:
    """Find the request's key; refuse the request (401) when it needs one and
    has none. `ops_protected`: /ready and /metrics need a key too."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = bearer_token(request)
        key = keyring.lookup(token) if token is not None else None
        request[API_KEY] = key
        if key is None and needs_key(request, keyring, ops_protected=ops_protected):
            if token is None:
                raise Unauthorized(
                    "You didn't provide an API key. Send it in the Authorization header "
                    "as 'Bearer YOUR_KEY'."
                )
            # Never echo the presented key, not even masked.
            raise Unauthorized("Incorrect API key provided.")
        return await handler(request)

    return auth_middleware


def hash_key_main(argv: list[str]) -> int:
    """python -m gateway hash-key: the SHA-256 line for API_KEYS_FILE."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway hash-key",
        description="Print the SHA-256 of an API key (read from stdin, so it stays out "
        "of shell history), or generate a new key with --generate.",
    )
    parser.add_argument("--name", default="my-key", help="name for the TOML snippet")
    parser.add_argument("--generate", action="store_true", help="make a new random key")
    args = parser.parse_args(argv)
    if args.generate:
        key = "sk-" + secrets.token_urlsafe(32)
        print(f"key (give to the client, store nowhere else): {key}", file=sys.stderr)
    else:
        key = sys.stdin.readline().strip()
        if not key:
            print("hash-key: no key on stdin", file=sys.stderr)
            return 2
    try:
        name = msgspec.convert(args.name, Name)
    except msgspec.ValidationError:
        print("hash-key: --name must match [A-Za-z0-9._-]{1,64}", file=sys.stderr)
        return 2
    print(f'[[keys]]\nname = "{name}"\nsha256 = "{hash_key(key)}"')
    return 0
