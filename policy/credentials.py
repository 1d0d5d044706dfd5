"""Credentials the policy checks itself, so no caller's word about who it is counts.

Approvals, autonomy changes and policy reloads reach the policy actor with a `Credential`: the
caller's API token, exactly as it was presented to the front door. The policy authenticates it
against the token store on its own (`CredentialCheck`), so a Ray participant that is not the API
(the case manager, a planner replica, a job submitted to the cluster) cannot approve, change a
mode or swap the policy by passing an `Identity` object it made up. Every refusal is recorded in
the policy's refusal log (`policy.refusals`) with what was attempted, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SecretStr

from opsagent.errors import AuthError
from opsagent.policy.identity import Identity, TokenStore


class Credential(BaseModel, frozen=True):
    """An API token presented to the policy (never printed: `SecretStr`)."""

    token: SecretStr = Field(description="The bearer token the caller authenticated with.")

    @classmethod
    def of(cls, token: str) -> Credential:
        return cls(token=SecretStr(token))


class CredentialCheck:
    """Turns a `Credential` into the identity the token store holds for it; nothing else passes."""

    def __init__(self, tokens: TokenStore | None) -> None:
        """`tokens`: the store the front door authenticates against (None: every call is refused)."""
        self.tokens = tokens

    def identify(self, credential: Any) -> Identity:
        """The identity behind `credential`; AuthError(401) for anything else (an `Identity`
        object, a bare string, an unknown or revoked token)."""
        if isinstance(credential, Identity):
            raise AuthError(f"an identity object ({credential.name!r}) is not a credential: the "
                            "policy authenticates the caller's token itself", status=401)
        if not isinstance(credential, Credential):
            raise AuthError(f"a {type(credential).__name__} is not a credential", status=401)
        if self.tokens is None:
            raise AuthError("this policy has no token store to authenticate against", status=401)
        return self.tokens.authenticate(credential.token.get_secret_value())
