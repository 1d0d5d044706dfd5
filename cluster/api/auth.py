"""Who is calling: a bearer token (API) or the console's cookie, checked against the hashed token
store; every caller is rate limited. The identity is kept on the request for the access log."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from opsagent.cluster.api.request_limits import RateLimiter
from opsagent.errors import AuthError
from opsagent.policy.credentials import Credential
from opsagent.policy.identity import Identity, TokenStore

bearer = HTTPBearer(auto_error=False, description="An API token (`opsagent tokens add NAME --role ROLE`).")


class Authenticator:
    """Turns a token into an identity; counts every request against the caller's rate limit
    (failed ones against the client address, so guessing tokens is slowed down too)."""

    def __init__(self, tokens: TokenStore, limiter: RateLimiter) -> None:
        self.tokens = tokens
        self.limiter = limiter

    def identify(self, token: str | None, client: str) -> Identity:
        try:
            identity = self.tokens.authenticate(token)
        except AuthError:
            self.limiter.hit(f"unauthenticated client {client}")
            raise
        self.limiter.hit(identity.name)
        return identity

    def authenticate(self, request: Request, token: str | None) -> Identity:
        """The caller of `request`; also stored as `request.state.identity`, and its token as
        `request.state.credential` (what the policy actor authenticates on its own); a refused
        known token, revoked or expired, as `request.state.refused`, for the access log."""
        try:
            identity = self.identify(token, request.client.host if request.client else "unknown")
        except AuthError as exc:
            if exc.subject:
                request.state.refused = exc.subject
            raise
        request.state.identity = identity
        request.state.credential = Credential.of(token or "")
        return identity


def api_caller(request: Request,
               credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Identity:
    """FastAPI dependency: the identity behind the request's bearer token (401 without one)."""
    auth: Authenticator = request.app.state.auth
    return auth.authenticate(request, credentials.credentials if credentials else None)


def api_credential(request: Request, caller: Identity = Depends(api_caller)) -> Credential:
    """FastAPI dependency: the authenticated caller's token, for the policy actor to check."""
    return request.state.credential
