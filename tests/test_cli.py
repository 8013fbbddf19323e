"""The command line: every subcommand is wired and documents its options."""

from __future__ import annotations

import pytest

from wearwatch.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert COMMANDS[command][1] in capsys.readouterr().out


def test_full_parser_builds() -> None:
    parser = build_parser(load_all=True)  # every command module imports and wires its arguments
    assert set(parser._subparsers._group_actions[0].choices) == set(COMMANDS)  # type: ignore[union-attr]
