"""``chronicle registry …``: the core vendor's side (release.md "Who does what").

The registry is the core vendor. ``vouch`` signs a vendor's first ``add-key`` with the
core vendor's key, after the registry has checked that the vendor owns the namespace (its
own way, e.g. on the code host); the vouching is on the chain. ``override …`` are the
emergency actions the core vendor may take on another vendor's keys and releases; the
rules record them as emergency actions, which clients apply under their ``off`` /
``review`` / ``auto`` policy. Both use a vendor profile whose vendor is the core vendor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from chronicle.cli.common import format_options, handle_errors, public_key
from chronicle.cli.release_profile import Profile, profile_option
from chronicle.cli.vendor import (
    checked,
    mirror_wait_option,
    publish_signed,
    sign_with_profile,
    split_package,
)
from chronicle.release.messages import (
    AddKey,
    Body,
    RevokeKey,
    RevokeUpdate,
    key_name,
    valid_vendor,
)


def _other_vendor(profile: Profile, name: str) -> str:
    if not valid_vendor(name):
        raise click.BadParameter(f"{name!r} is not a Composer vendor name",
                                 param_hint="--vendor")
    if name == profile.vendor:
        raise click.BadParameter(f"{name!r} is the registry's own vendor: use `chronicle "
                                 "vendor` for its own keys", param_hint="--vendor")
    return name


def _act(profile_path: Path, build: Any, fmt: str, as_json: bool, mirror_wait: float,
         extra: dict[str, Any]) -> None:
    profile = Profile.load(profile_path)
    body: Body = checked(build(profile))
    publish_signed(profile, sign_with_profile(profile, body), extra, how="submitted",
                   mirror_wait=mirror_wait, as_json=as_json or fmt == "json")


@click.group()
def registry() -> None:
    """The registry (core vendor): vouch for vendors, emergency overrides."""


@registry.command("vouch")
@profile_option
@click.option("--vendor", "vendor_name", required=True,
              help="The vendor whose namespace ownership the registry has checked.")
@click.option("--public-key", "pk", required=True,
              help="The vendor's first key (base64url, 32 bytes).")
@click.option("--name", "label", help="A label for the key.")
@mirror_wait_option
@format_options
@handle_errors
def vouch(profile_path: Path, vendor_name: str, pk: str, label: str | None,
          mirror_wait: float, fmt: str, as_json: bool) -> None:
    """Sign and submit a vendor's first add-key with the core vendor's key.

    Run it only after checking that the requester owns the namespace.
    """
    public_key(pk)
    _act(profile_path, lambda p: AddKey(vendor=_other_vendor(p, vendor_name),
                                        publickey=pk.strip(), name=key_name(pk, label)),
         fmt, as_json, mirror_wait, {"vouched": vendor_name})


@registry.group("override")
def override() -> None:
    """Emergency actions on another vendor's keys and releases (recorded as emergency)."""


@override.command("add-key")
@profile_option
@click.option("--vendor", "vendor_name", required=True, help="The vendor to act for.")
@click.option("--public-key", "pk", required=True, help="The key to add (base64url).")
@click.option("--name", "label", help="A label for the key.")
@click.option("--limited", is_flag=True, help="The key may sign releases only.")
@mirror_wait_option
@format_options
@handle_errors
def override_add_key(profile_path: Path, vendor_name: str, pk: str, label: str | None,
                     limited: bool, mirror_wait: float, fmt: str, as_json: bool) -> None:
    """Add a key to a vendor that already has keys (e.g. after it lost all of them)."""
    public_key(pk)
    _act(profile_path, lambda p: AddKey(vendor=_other_vendor(p, vendor_name),
                                        publickey=pk.strip(), name=key_name(pk, label),
                                        limited=limited),
         fmt, as_json, mirror_wait, {"emergency": True})


@override.command("revoke-key")
@profile_option
@click.option("--vendor", "vendor_name", required=True, help="The vendor to act for.")
@click.option("--public-key", "pk", required=True, help="The key to revoke (base64url).")
@mirror_wait_option
@format_options
@handle_errors
def override_revoke_key(profile_path: Path, vendor_name: str, pk: str, mirror_wait: float,
                        fmt: str, as_json: bool) -> None:
    """Revoke a vendor's key (e.g. a stolen one)."""
    public_key(pk)
    _act(profile_path, lambda p: RevokeKey(vendor=_other_vendor(p, vendor_name),
                                           publickey=pk.strip()),
         fmt, as_json, mirror_wait, {"emergency": True})


@override.command("revoke-release")
@profile_option
@click.argument("package")
@click.argument("version")
@click.option("--reason", required=True, help="Why it is revoked.")
@mirror_wait_option
@format_options
@handle_errors
def override_revoke_release(profile_path: Path, package: str, version: str, reason: str,
                            mirror_wait: float, fmt: str, as_json: bool) -> None:
    """Revoke release VENDOR/NAME VERSION of another vendor (e.g. malware)."""
    owner, name = split_package(package, None)

    def build(p: Profile) -> RevokeUpdate:
        return RevokeUpdate(vendor=_other_vendor(p, owner), name=name, version=version,
                            reason=reason)

    _act(profile_path, build, fmt, as_json, mirror_wait, {"emergency": True})
