"""Every command that reads the configuration takes --config and, without it, the one documented
default path, falling back to the embedded default only when that file does not exist (issue 20
item 6)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mailgate.cli import config_option
from mailgate.cli.main import build_parser, main

COMMANDS = (["serve"], ["config", "check"], ["config", "show"], ["queue", "list"], ["user", "list"],
            ["explain"], ["stats"], ["mx"], ["recipients", "check"])


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_documents_config_and_its_default(command: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--config FILE" in out and "/etc/mailgate/mailgate.toml" in out


def test_queue_config_before_the_action_is_kept() -> None:
    args = build_parser().parse_args(["queue", "--config", "/x.toml", "list"])
    assert args.config == "/x.toml"


def test_default_path_is_used_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    default = tmp_path / "mailgate.toml"
    default.write_text('[server]\nhostname = "from-default.example"\n[[listener]]\nname = "mx"\n'
                       'address = "127.0.0.1:2525"\ntls = "none"\n')
    monkeypatch.setattr(config_option, "DEFAULT_CONFIG", str(default))
    assert main(["config", "show"]) == 0
    assert 'hostname = "from-default.example"' in capsys.readouterr().out
    assert main(["config", "check"]) == 0
    assert f"{default}: OK" in capsys.readouterr().out


def test_embedded_default_only_when_the_default_path_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(config_option, "DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    assert main(["config", "check"]) == 0
    assert "<embedded default>: OK" in capsys.readouterr().out


def test_a_broken_default_file_is_not_replaced_by_the_embedded_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    default = tmp_path / "mailgate.toml"
    default.write_text("[server]\nnope = 1\n")
    monkeypatch.setattr(config_option, "DEFAULT_CONFIG", str(default))
    assert main(["explain", "--client", "192.0.2.1", "--from", "a@b.example", "--to", "c@d.example"]) == 2
    assert f"mailgate explain: {default}: server.nope: unknown key" in capsys.readouterr().err


def test_show_non_default_lists_only_changed_keys_and_loads_back(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20 item 11: `config show --non-default`, like `postconf -n`."""
    from mailgate.config.loader import load_file, load_text
    from mailgate.config.schema import SECTIONS

    example = Path(__file__).resolve().parents[2] / "docs" / "example.toml"
    assert main(["config", "show", "--non-default", "--config", str(example)]) == 0
    shown = capsys.readouterr().out
    assert 'hostname = "mx1.example.com"' in shown
    assert "max_recipients" not in shown and "[limits]" not in shown  # left at their defaults
    assert main(["config", "show", "--config", str(example)]) == 0
    assert len(capsys.readouterr().out) > 2 * len(shown)
    original, again = load_file(example), load_text(shown)
    for section in SECTIONS:
        assert getattr(again, section.name) == getattr(original, section.name), section.name


@pytest.mark.parametrize("command", [["explain", "--client", "192.0.2.1", "--from", "", "--to", "a@b.test"],
                                     ["recipients", "check", "a@b.test"]], ids=" ".join)
def test_a_configured_command_with_a_bad_file_says_one_line_per_problem_and_exits_2(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nhostname = 7\nno_such_key = 1\n')  # and no [[listener]]
    assert main([*command, "--config", str(bad)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"mailgate {command[0]}: {bad}: ") for line in lines), lines
    assert main([*command, "--config", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err == f"mailgate {command[0]}: {tmp_path / 'missing.toml'}: no such file\n"


def test_with_config_never_calls_the_handler_without_a_configuration(tmp_path: Path) -> None:
    called = []
    handler = config_option.with_config("x")(lambda args, config: called.append(config) or 0)
    assert handler(argparse.Namespace(config=str(tmp_path / "missing.toml"))) == 2 and called == []
    (tmp_path / "good.toml").write_text('[server]\nhostname = "good.example"\n[[listener]]\nname = "mx"\n'
                                        'address = "127.0.0.1:2525"\ntls = "none"\n')
    assert handler(argparse.Namespace(config=str(tmp_path / "good.toml"))) == 0
    assert called[0].server.hostname == "good.example"
