"""The command line as a person meets it: a subcommand's --help lists only the flags it reads, a global
option works on either side of the subcommand, and a subcommand's flag put first gets a clear hint."""

from __future__ import annotations

import pytest

from tinyscheduler.cli.main import COMMAND_SETTINGS, build_parser, main
from tinyscheduler.config.settings import SETTINGS


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["status", "logs", "report", "history", "config"])
def test_a_subcommands_help_lists_only_the_settings_it_reads(command: str, capsys) -> None:
    text = help_of(command, capsys)
    wanted = set(COMMAND_SETTINGS.get(command, ())) | {"base_path", "log_level", "log_format"}
    listed = {info.name for info in SETTINGS if f"{info.flag} " in text or f"{info.flag}," in text}
    assert listed == wanted
    assert len(text.splitlines()) < 70, "was about 150 lines, every setting's flag"


def test_report_reads_the_tinytask_url_and_status_does_not(capsys) -> None:
    assert "--mcp-endpoint" in help_of("report", capsys)
    assert "--mcp-endpoint" not in help_of("status", capsys)
    assert "3 no daemon runs" in help_of("status", capsys)


def test_global_options_work_before_or_after_the_subcommand(tmp_path, capsys) -> None:
    before = build_parser().parse_args(["--base-path", str(tmp_path), "--env-file", "x.env", "status"])
    after = build_parser().parse_args(["status", "--base-path", str(tmp_path), "--env-file", "x.env"])
    assert (before.base_path, before.env_file) == (after.base_path, after.env_file)


@pytest.mark.parametrize("argv", [["--mcp-endpoint", "http://h:1", "report"], ["--no-dry-run", "run", "--once"]])
def test_a_subcommands_flag_before_it_gets_a_hint(argv: list[str], capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    flag, command = argv[0], argv[-1] if argv[-1] != "--once" else "run"
    assert f"{flag} is a flag of the subcommand" in err and f"tinyscheduler {command} {flag}" in err
    assert "invalid choice" not in err
