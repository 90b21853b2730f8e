"""The `mesh` command: a click group, and the wrapper that turns errors into one line."""

from __future__ import annotations

import errno
import importlib
import sys
from pathlib import Path

import click

from mesh import __version__
from mesh.errors import MeshError

EXIT_FAILURE = 1
EXIT_USAGE = 2


class Context:
    """What every command gets: where the home is."""

    def __init__(self, home_path: Path | None) -> None:
        self._home_path = home_path

    @property
    def home_path(self) -> Path:
        if self._home_path is None:
            from mesh.drivers.home import default_home

            self._home_path = default_home()
        return self._home_path

    def home(self):  # -> mesh.drivers.home.Home
        from mesh.drivers.home import Home

        return Home.open(self.home_path)

    def state_file(self):  # -> mesh.drivers.statefile.StateFile
        """The shared state of this home; CLI writes go through `transaction(actor)`."""
        from mesh.drivers.statefile import StateFile

        return StateFile(self.home().state_path)

    def actor(self) -> bytes:
        """A fresh Automerge actor for this process (never shared with the agent)."""
        import os

        from mesh.state.document import actor_id

        return actor_id(self.home().info.node_id, os.urandom(8))


# command name -> "module:attribute"; modules load only when their command runs, so that
# `mesh cat` starts fast (the read benchmark counts start-up time).
COMMANDS = {
    "init": "mesh.cli.node_cmds:init",
    "id": "mesh.cli.node_cmds:id_",
    "invite": "mesh.cli.node_cmds:invite",
    "join": "mesh.cli.node_cmds:join",
    "admit": "mesh.cli.node_cmds:admit",
    "pending": "mesh.cli.node_cmds:pending",
    "members": "mesh.cli.node_cmds:members",
    "revoke": "mesh.cli.node_cmds:revoke",
    "up": "mesh.cli.agent_cmds:up",
    "status": "mesh.cli.agent_cmds:status",
    "wait": "mesh.cli.agent_cmds:wait",
    "add": "mesh.cli.store_cmds:add",
    "ls": "mesh.cli.store_cmds:ls",
    "cat": "mesh.cli.store_cmds:cat",
    "tag": "mesh.cli.store_cmds:tag",
    "verify": "mesh.cli.store_cmds:verify",
    "gc": "mesh.cli.store_cmds:gc",
    "release": "mesh.cli.release_cmds:release",
    "policy": "mesh.cli.consent_cmds:policy",
    "consent": "mesh.cli.consent_cmds:consent",
    "stats": "mesh.cli.consent_cmds:stats",
    "crew-token": "mesh.cli.web_cmds:crew_token",
    "export-static": "mesh.cli.web_cmds:export_static",
    "door": "mesh.cli.web_cmds:door",
    "doctor": "mesh.cli.ops_cmds:doctor",
    "drill": "mesh.cli.ops_cmds:drill",
    "demo": "mesh.cli.ops_cmds:demo",
    "watch": "mesh.cli.ingest_cmds:watch",
    "tags": "mesh.cli.tag_cmds:tags",
    "pin": "mesh.cli.tag_cmds:pin",
    "unpin": "mesh.cli.tag_cmds:unpin",
    "tls": "mesh.cli.tls_cmds:tls",
    "drop": "mesh.cli.drop_cmds:drop",
    "hub": "mesh.cli.hub_cmds:hub",
    "live": "mesh.cli.live_cmds:live",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", "home_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Node home directory (default: $MESH_HOME or the platform's user data dir).",
)
@click.version_option(__version__, prog_name="mesh")
@click.pass_context
def cli(ctx: click.Context, home_dir: Path | None) -> None:
    """AssetMesh: local-first asset sync for pop-ups and micro-events."""
    ctx.obj = Context(home_dir)


def _fail(message: str) -> None:
    from mesh.cli import output

    output.fail_line(message)


def _os_error_line(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full: free some space and run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {exc.filename or exc}"
    if exc.errno == errno.EPIPE:
        return "output closed early"
    return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run a command; errors become one line on stderr and a non-zero exit."""
    try:
        cli.main(args=argv, prog_name="mesh", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        _fail(exc.format_message())
        if isinstance(exc, click.UsageError):
            sys.stderr.write("Run `mesh --help` (or `mesh COMMAND --help`) for usage.\n")
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except MeshError as exc:
        _fail(str(exc))
        sys.exit(EXIT_FAILURE)
    except BrokenPipeError:
        sys.exit(EXIT_FAILURE)
    except OSError as exc:
        _fail(_os_error_line(exc))
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        _fail("interrupted")
        sys.exit(130)
