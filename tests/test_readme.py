"""The README is the front door: keep it true to the code."""

from __future__ import annotations

from pathlib import Path

from wearwatch.cli import COMMANDS
from wearwatch.config import env_names

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_shows_the_two_setup_commands() -> None:
    assert "make demo" in README and "make test" in README


def test_every_setting_is_documented() -> None:
    # "WEARWATCH_MQTT_HOST` / `_PORT`" documents WEARWATCH_MQTT_PORT too
    missing = []
    for name in env_names():
        parts = name.split("_")
        suffixes = ["_" + "_".join(parts[i:]) for i in range(1, len(parts))]
        if name not in README and not any(f"`{s}`" in README for s in suffixes):
            missing.append(name)
    assert missing == []


def test_every_command_is_documented() -> None:
    assert [c for c in COMMANDS if f"wearwatch {c}" not in README] == []
