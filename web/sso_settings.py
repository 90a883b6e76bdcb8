"""The ``[sso]`` settings of the page's single sign-on (web/sso.py), each defined once, here.

They are read from ``sso.toml`` in the data directory when the web app starts; without that file
the page signs in with keys and admin tokens only, as before. The client secret is never in the
file: ``client_secret_env`` names the environment variable that holds it, and nothing logs it.

    [sso]
    issuer = "https://login.example.com/realms/acme"   # discovery: ISSUER/.well-known/openid-configuration
    client_id = "aispendtrack"
    client_secret_env = "AISPENDTRACK_SSO_CLIENT_SECRET"
    groups_claim = "groups"
    [sso.roles]          # group -> admin | viewer
    "spend-admins" = "admin"
    "finance" = "viewer"
    [sso.teams]          # group -> team name: the `team` role, that team's calls and budgets
    "team-search" = "search"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

FILE_NAME = "sso.toml"
SECRET_ENV_DEFAULT = "AISPENDTRACK_SSO_CLIENT_SECRET"
MAPPED_ROLES = ("admin", "viewer")  # [sso.roles]; the `team` role comes from [sso.teams]

# name -> (default, help); None: required.
SETTINGS: dict[str, tuple[object, str]] = {
    "issuer": (None, "The identity provider's issuer URL (its discovery document is ISSUER/.well-known/"
                     "openid-configuration, and ID tokens must name it as `iss`)."),
    "client_id": (None, "This app's client id at the provider (ID tokens must name it as their audience)."),
    "client_secret_env": (SECRET_ENV_DEFAULT, "The environment variable holding the client secret."),
    "groups_claim": ("groups", "The ID token claim listing the user's groups."),
    "redirect_uri": ("", "The callback URL registered at the provider; empty: this site's /sso/callback as "
                         "the browser reached it."),
    "scopes": ("openid email profile", "The scopes asked for (add the one that releases the groups claim, "
                                       "if the provider needs one)."),
    "roles": ({}, "[sso.roles]: group -> admin or viewer."),
    "teams": ({}, "[sso.teams]: group -> team name (the team role)."),
}


class SsoSettingsError(ValueError):
    """sso.toml is not usable; the message says what to fix."""


@dataclass(frozen=True)
class SsoSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)  # from the environment; never printed
    client_secret_env: str = SECRET_ENV_DEFAULT
    groups_claim: str = "groups"
    redirect_uri: str = ""
    scopes: str = "openid email profile"
    roles: dict[str, str] = field(default_factory=dict)
    teams: dict[str, str] = field(default_factory=dict)

    def mapped(self, groups: list[str]) -> tuple[str, ...]:
        """Those of ``groups`` these settings map to a role or a team (what a sign-in keeps)."""
        return tuple(sorted({g for g in groups if g in self.roles or g in self.teams}))

    def role_for(self, groups: list[str]) -> tuple[str | None, tuple[str, ...]]:
        """The role (None: none) and teams these groups give: admin over viewer over team."""
        roles = {self.roles[g] for g in groups if g in self.roles}
        teams = tuple(sorted({self.teams[g] for g in groups if g in self.teams}))
        for role in MAPPED_ROLES:
            if role in roles:
                return role, ()
        return ("team", teams) if teams else (None, ())


def load(home: Path, environ: dict[str, str] | None = None) -> SsoSettings | None:
    """The data directory's sso.toml, validated; None when there is none (SSO off)."""
    path = home / FILE_NAME
    if not path.exists():
        return None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SsoSettingsError(f"{path}: not readable as TOML ({exc}).") from None
    return parse(document.get("sso"), str(path), os.environ if environ is None else environ)


def parse(section: object, origin: str, environ) -> SsoSettings:
    if not isinstance(section, dict):
        raise SsoSettingsError(f"{origin}: needs an [sso] section (docs/sso.md).")
    if "client_secret" in section:
        raise SsoSettingsError(f"{origin}: the client secret does not belong in a file; put it in an environment "
                               f"variable named by client_secret_env (default {SECRET_ENV_DEFAULT}).")
    unknown = sorted(set(section) - set(SETTINGS))
    if unknown:
        raise SsoSettingsError(f"{origin}: unknown [sso] setting {', '.join(unknown)}; known: {', '.join(SETTINGS)}.")
    values = {name: section.get(name, default) for name, (default, _) in SETTINGS.items()}
    for name in ("issuer", "client_id"):
        if not isinstance(values[name], str) or not values[name]:
            raise SsoSettingsError(f"{origin}: [sso] {name} is required (docs/sso.md).")
    for name in ("client_secret_env", "groups_claim", "scopes"):  # a list or a number failed at the first sign-in
        if not isinstance(values[name], str) or not values[name]:
            raise SsoSettingsError(f"{origin}: [sso] {name} must be a non-empty string, got {values[name]!r}.")
    if not isinstance(values["redirect_uri"], str):
        raise SsoSettingsError(f"{origin}: [sso] redirect_uri must be a URL (a string), "
                               f"got {values['redirect_uri']!r}.")
    for name in ("roles", "teams"):
        if not isinstance(values[name], dict) or not all(isinstance(v, str) and v for v in values[name].values()):
            raise SsoSettingsError(f"{origin}: [sso.{name}] maps group names to names.")
    bad = sorted(r for r in values["roles"].values() if r not in MAPPED_ROLES)
    if bad:
        raise SsoSettingsError(f"{origin}: [sso.roles] gives admin or viewer (team users are in [sso.teams]), "
                               f"not {', '.join(bad)}.")
    secret = environ.get(values["client_secret_env"], "")
    if not secret:
        raise SsoSettingsError(f"{origin}: single sign-on needs the client secret in the environment variable "
                               f"{values['client_secret_env']}, which is not set.")
    values["issuer"] = values["issuer"].rstrip("/")
    return SsoSettings(client_secret=secret, **{k: v for k, v in values.items()})
