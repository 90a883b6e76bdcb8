"""Single sign-on for the page: OpenID Connect with Authlib as the client (docs/sso.md).

``/sso/login`` reads the provider's discovery document and sends the browser there with a fresh
state, nonce and PKCE verifier (S256); ``/sso/callback`` checks the state, redeems the code with the
verifier, and verifies the ID token: signature against the provider's JWKS, issuer, audience (our
client id), expiry and nonce. The user's groups give a role (web/sso_settings.py), computed afresh at
every sign-in, and a page session like a key's starts (web/auth.py); ``/logout`` ends it.

The state, nonce and verifier wait in a cookie of their own, signed, HttpOnly, SameSite=Lax and
good for one use within STATE_LIFETIME: the page's session cookie is SameSite=Strict, so a browser
coming back from the provider's site does not send it. For the same reason the callback answers
with a page that moves on to ``/`` itself: a redirect would still count as the provider's
navigation, and the new Strict cookie would not be sent with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from flask import Blueprint, Response, current_app, make_response, render_template, request, session, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from addon.core.store import sessions as session_rows
from addon.core.store import sso_users, writing
from addon.core.wording import visible

from .api import db_path
from .auth import NO_ROLE, same_token, start_session
from .pages import own_path
from .sso_settings import SsoSettings

log = logging.getLogger("aispendtrack.web")
sign_on = Blueprint("sso", __name__, url_prefix="/sso")

PENDING_COOKIE = "aispendtrack_sso"
STATE_LIFETIME = dt.timedelta(minutes=10)
HTTP_TIMEOUT_S = 10  # each request to the provider: discovery, token, JWKS
LEEWAY_S = 60  # clock difference allowed on the ID token's exp and iat


class SignInFailed(Exception):
    """A sign-in that cannot go on; ``message`` is shown as is, ``status`` is the page's."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


@sign_on.errorhandler(SignInFailed)
def _failed(exc: SignInFailed):
    response = make_response(render_template("sso_error.html", title=exc.title, message=exc.message), exc.status)
    response.delete_cookie(PENDING_COOKIE, path="/sso/")
    return response


def settings() -> SsoSettings:
    found = current_app.config.get("SSO")
    if found is None:
        raise SignInFailed(404, "Single sign-on is off", "This site has no single sign-on set up (docs/sso.md): "
                                                         "sign in with a key or an admin token.")
    return found


@sign_on.get("/login")
def start() -> Response:
    cfg = settings()
    metadata = _discover(cfg)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    client = _client(cfg)
    url, _ = client.create_authorization_url(metadata["authorization_endpoint"], state=state, code_verifier=verifier,
                                             nonce=nonce)
    pending = {"state": state, "nonce": nonce, "verifier": verifier, "next": own_path(request.args.get("next", "/"))}
    response = make_response("", 302)
    response.headers["Location"] = url
    response.set_cookie(PENDING_COOKIE, _signer().dumps(pending), max_age=int(STATE_LIFETIME.total_seconds()),
                        path="/sso/", httponly=True, samesite="Lax", secure=request.is_secure)
    return response


@sign_on.get("/callback")
def callback() -> Response:
    cfg = settings()
    # The state first, the provider's error after: a link anyone can make to /sso/callback?error=... must
    # not put its words on this site's page (the provider sends its errors with our state, RFC 6749 4.1.2.1).
    pending = _pending()
    if not same_token(pending["state"], request.args.get("state", "")):
        raise SignInFailed(400, "Sign-in expired", _EXPIRED)
    if "error" in request.args:  # the provider refused or the user cancelled
        said = f"{request.args['error']} {request.args.get('error_description', '')}".strip()
        raise SignInFailed(401, "Sign-in refused", f"The identity provider said: {said[:300]}")
    metadata = _discover(cfg)
    claims = _verified_claims(cfg, metadata, pending)
    groups = claims.get(cfg.groups_claim) or []
    groups = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
    role, teams = cfg.role_for(groups)
    sub = str(claims["sub"])
    with writing(db_path()) as con:
        sso_users.signed_in(con, sub, _claim_text(claims, "name"), _claim_text(claims, "email"), role, teams,
                            cfg.mapped(groups), dt.datetime.now(dt.UTC))
        if role is None:
            session_rows.end_for(con, sub)  # its earlier sessions too: it has lost whatever role it had
    if role is None:
        log.info("single sign-on: %s refused, no group of theirs maps to a role", _claim_text(claims, "email") or sub)
        raise SignInFailed(403, "No role for you here", NO_ROLE)
    session.clear()
    session["sid"] = start_session(db_path(), "sso", sub)
    response = make_response(render_template("sso_done.html", target=pending["next"]))
    response.delete_cookie(PENDING_COOKIE, path="/sso/")
    return response


MAX_CLAIM = 200  # characters of a name or e-mail kept from the ID token


def _claim_text(claims: dict, name: str) -> str | None:
    """A claim shown on the page and written in the audit trail: text only (an object or a list is
    dropped), control characters as visible escapes, so a name with a CR cannot rewrite a row of
    `aispendtrack audit` in a terminal."""
    value = claims.get(name)
    return visible(value, MAX_CLAIM) if isinstance(value, str) and value else None


_EXPIRED = ("This sign-in link expired or was already used (each works once, within 10 minutes). "
            "Start again from the sign-in page.")


def _pending() -> dict:
    raw = request.cookies.get(PENDING_COOKIE)
    if not raw:
        raise SignInFailed(400, "Sign-in expired", _EXPIRED)
    try:
        return _signer().loads(raw, max_age=int(STATE_LIFETIME.total_seconds()))
    except BadSignature:  # its SignatureExpired too
        raise SignInFailed(400, "Sign-in expired", _EXPIRED) from None


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="aispendtrack-sso-pending")


def _client(cfg: SsoSettings) -> OAuth2Session:
    redirect_uri = cfg.redirect_uri or url_for("sso.callback", _external=True)
    return OAuth2Session(cfg.client_id, cfg.client_secret, scope=cfg.scopes, redirect_uri=redirect_uri,
                         code_challenge_method="S256", default_timeout=HTTP_TIMEOUT_S)


def _discover(cfg: SsoSettings) -> dict:
    """The provider's discovery document (asked at every sign-in: a changed key or endpoint is seen)."""
    metadata = _get_json(cfg, f"{cfg.issuer}/.well-known/openid-configuration")
    issuer = metadata.get("issuer")
    if not isinstance(issuer, str) or issuer.rstrip("/") != cfg.issuer:
        raise SignInFailed(502, "Identity provider misconfigured",
                           f"The discovery document at {cfg.issuer} names another issuer "
                           f"({metadata.get('issuer')!r}); check [sso] issuer in sso.toml.")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(metadata.get(name), str):
            raise SignInFailed(502, "Identity provider misconfigured", f"The discovery document lacks {name}.")
    return metadata


def _get_json(cfg: SsoSettings, url: str) -> dict:
    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        found = response.json()
    except (requests.RequestException, ValueError) as exc:
        log.warning("single sign-on: %s did not answer: %s", url, type(exc).__name__)
        raise SignInFailed(503, "Identity provider unreachable", _unreachable(cfg)) from None
    if not isinstance(found, dict):
        raise SignInFailed(502, "Identity provider misconfigured", f"{url} did not answer a JSON object.")
    return found


def _unreachable(cfg: SsoSettings) -> str:
    return (f"The identity provider at {cfg.issuer} did not answer, so single sign-on cannot go on now. Try again "
            "in a while, or sign in with a key or an admin token, which work as ever.")


def _verified_claims(cfg: SsoSettings, metadata: dict, pending: dict) -> dict:
    """The code redeemed (with the PKCE verifier), and the ID token's claims once its signature, issuer,
    audience, expiry and nonce are checked."""
    client = _client(cfg)
    try:
        token = client.fetch_token(metadata["token_endpoint"], grant_type="authorization_code",
                                   code=request.args.get("code", ""), code_verifier=pending["verifier"])
    except requests.RequestException:
        raise SignInFailed(503, "Identity provider unreachable", _unreachable(cfg)) from None
    except AuthlibBaseError as exc:  # e.g. invalid_grant: the code was used already
        raise SignInFailed(400, "Sign-in refused", f"The identity provider refused the sign-in: {exc.error}. "
                                                   "Start again from the sign-in page.") from None
    if "id_token" not in token:
        raise SignInFailed(502, "Identity provider misconfigured", "The provider sent no ID token (is `openid` "
                                                                   "among [sso] scopes?).")
    try:
        keys = KeySet.import_key_set(_get_json(cfg, metadata["jwks_uri"]))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError, AttributeError):  # `keys` not a list of keys
        raise SignInFailed(502, "Identity provider misconfigured",
                           f"The provider's key set ({metadata['jwks_uri']}) holds no keys we can read.") from None
    algorithms = _signing_algorithms(metadata)
    try:
        decoded = jwt.decode(token["id_token"], keys, registry=JWSRegistry(algorithms=algorithms,
                                                                           strict_check_header=False))
        expected = {"iss": {"essential": True, "values": [metadata["issuer"]]},
                    "aud": {"essential": True, "values": [cfg.client_id]}}  # our client id, and no other
        claims = CodeIDToken(decoded.claims, decoded.header, expected, {
            "nonce": pending["nonce"], "client_id": cfg.client_id, "access_token": token.get("access_token")})
        claims.validate(leeway=LEEWAY_S)
    except (JoseError, AuthlibBaseError, ValueError) as exc:
        reason = getattr(exc, "description", None) or getattr(exc, "error", None) or type(exc).__name__
        log.warning("single sign-on: ID token refused: %s", reason)
        raise SignInFailed(401, "Sign-in refused", f"The ID token from the identity provider was refused: {reason}. "
                                                   "Nobody was signed in.") from None
    return dict(claims)


# The ID token must carry a signature by one of the provider's published (JWKS) keys: never `none`
# (unsigned) nor an HMAC, even when the discovery document lists them (the spec allows `none` where
# the token comes from the token endpoint; a tampered or spoofed token endpoint would then sign
# anyone in).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                         "ES256K", "EdDSA", "Ed25519")


def _signing_algorithms(metadata: dict) -> list[str]:
    """The discovery document's ID token algorithms that sign with a published key (RS256 if it lists none:
    the spec's default)."""
    advertised = metadata.get("id_token_signing_alg_values_supported")
    if not isinstance(advertised, list) or not advertised:
        return ["RS256"]
    return [alg for alg in advertised if alg in ASYMMETRIC_ALGORITHMS]
