from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import handle_errors, json_option, path_option


@click.command()
@path_option(
    "--out",
    "out_path",
    required=True,
    help="Private key file to write; the public key goes to OUT.pub. Neither is ever overwritten.",
)
@json_option
@handle_errors
def keygen(out_path: Path, as_json: bool) -> None:
    """Make an ed25519 key pair for signing bundles.

    Keep KEY private (mode 0600); copy KEY.pub to the devices.

    \b
    edgetl keygen --out release.key
    edgetl package runs/a --out bundle.tar.gz --sign release.key
    edgetl-run predict bundle.tar.gz photo.jpg --trust release.key.pub   # or EDGETL_TRUSTED_KEYS=release.key.pub
    """
    from edgetl.console import out, print_json
    from edgetl_runtime.signing import generate_keypair

    private, public, kid = generate_keypair(out_path)
    if as_json:
        print_json({"private_key": str(private), "public_key": str(public), "key_id": kid})
        return
    out.print(f"private key {private} (keep it secret), public key {public}, key id {kid}")
