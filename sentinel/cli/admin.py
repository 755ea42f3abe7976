"""`sentinel admin token`: make an admin API token and the line for the tokens file."""

from __future__ import annotations

import click

from sentinel.admin.auth import ROLES, hash_token, new_token


@click.group()
def admin() -> None:
    """The admin API's access tokens (SENTINEL_ADMIN_TOKENS_FILE)."""


@admin.command("token")
@click.option("--name", required=True, help="Who the token is for (appears in the audit trail).")
@click.option("--role", type=click.Choice(ROLES), required=True, help="auditor: may decrypt; operator: may not.")
def token(name: str, role: str) -> None:
    """Print a new token (shown once; give it to its holder) and the entry to add to the tokens file."""
    value = new_token()
    click.echo(f"token (shown once): {value}", err=True)
    click.echo(f"  - name: {name}\n    role: {role}\n    sha256: {hash_token(value)}")
