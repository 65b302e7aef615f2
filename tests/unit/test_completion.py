"""Shell completion and the manual page are made from the parser: every subcommand and every flag is in
each, the scripts parse in their shell, and bash completes what a person types."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tinyscheduler.cli.completion import SHELLS, model
from tinyscheduler.cli.main import build_parser, main

PARSER = build_parser()
TOP, COMMANDS = model(PARSER)


def every_flag() -> list[str]:
    return sorted({flag for option in [*TOP, *(o for c in COMMANDS for o in c.options)] for flag in option.flags})


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_each_script_covers_every_subcommand_and_flag_and_parses(shell: str, tmp_path: Path) -> None:
    script = SHELLS[shell](PARSER)
    assert [c.name for c in COMMANDS if c.name not in script] == []
    # fish names a long flag `-l name`, a short one `-s x`.
    spelled = (lambda f: f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}") if shell == "fish" else (lambda f: f)
    assert [flag for flag in every_flag() if spelled(flag) not in script] == []
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed")
    path = tmp_path / f"completion.{shell}"
    path.write_text(script)
    result = subprocess.run([program, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")


def complete_bash(words: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "completion.bash"
    path.write_text(SHELLS["bash"](PARSER))
    line = (
        f"source {path}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); "
        '_tinyscheduler; echo "${COMPREPLY[@]}"'
    )
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30, check=True).stdout.split()


def test_bash_completes_subcommands_their_own_flags_and_choices(tmp_path: Path) -> None:
    assert complete_bash("tinyscheduler st", tmp_path) == ["status"]
    assert set(complete_bash("tinyscheduler status --", tmp_path)) >= {"--json", "--running-dir", "--env-file"}
    assert "--mcp-endpoint" not in complete_bash("tinyscheduler status --", tmp_path)  # not a flag of status
    assert complete_bash("tinyscheduler completion ''", tmp_path) == ["bash", "zsh", "fish"]
    assert complete_bash("tinyscheduler report --format ''", tmp_path) == ["table", "json", "markdown"]


def test_the_manual_page_has_every_subcommand_and_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["man"]) == 0
    page = capsys.readouterr().out
    assert [c.name for c in COMMANDS if f".SS {c.name}" not in page] == []
    assert [flag for flag in every_flag() if flag.replace("-", "\\-") not in page] == []
    if shutil.which("man"):
        shown = subprocess.run(["man", "-l", "-"], input=page, capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "validate-config" in shown.stdout
