"""Shell completion (bash, zsh, fish) and the manual page, both made from the argument parser itself,
so that neither can fall behind a new subcommand or flag.

`tinyscheduler completion bash|zsh|fish` prints the script; `tinyscheduler man` prints the page (roff,
for `man -l -`, or to install as man1/tinyscheduler.1).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from tinyscheduler import __version__

PROG = "tinyscheduler"


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...] = ()
    metavar: str = ""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    epilog: str
    options: tuple[Option, ...]
    #: Positional arguments: (metavar, help, choices).
    positionals: tuple[tuple[str, str, tuple[str, ...]], ...]


def _text(value: object) -> str:
    return "" if value in (None, argparse.SUPPRESS) else " ".join(str(value).replace("%%", "%").split())


def _options(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> tuple[Option, ...]:
    found = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or set(action.option_strings) & skip:
            continue
        choices = tuple(str(c) for c in action.choices) if action.choices else ()
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        found.append(Option(tuple(action.option_strings), _text(action.help), action.nargs != 0, choices, metavar))
    return tuple(found)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def model(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Command, ...]]:
    """The global options (of the main parser) and every subcommand with its own options."""
    top = _options(parser)
    shared = frozenset(flag for option in top for flag in option.flags if flag not in ("-h", "--help", "--version"))
    sub = _subparsers(parser)
    helps = {choice.dest: _text(choice.help) for choice in sub._choices_actions}
    commands = []
    for name, child in sub.choices.items():
        positionals = tuple(
            (str(a.metavar or a.dest), _text(a.help), tuple(str(c) for c in a.choices or ()))
            for a in child._actions
            if not a.option_strings
        )
        commands.append(
            Command(
                name,
                helps.get(name, ""),
                _text(child.description),
                _text(child.epilog),
                _options(child, shared),
                positionals,
            )
        )
    return top, tuple(commands)


# --- bash ------------------------------------------------------------------------------------------


def bash(parser: argparse.ArgumentParser) -> str:
    top, commands = model(parser)
    names = " ".join(c.name for c in commands)
    cases = [f'        "") flags_="{_flags(top)}"; words_="{names}" ;;']
    for c in commands:
        positional = " ".join(choice for _, _, choices in c.positionals for choice in choices)
        cases.append(f'        {c.name}) flags_="{_flags(c.options)} {_flags(top)}"; words_="{positional}" ;;')
    values = [
        f'        {"|".join(o.flags)}) COMPREPLY=($(compgen -W "{" ".join(o.choices)}" -- "$cur")); return ;;'
        for o in _all(top, commands)
        if o.choices
    ]
    alternatives = "|".join(c.name for c in commands)
    takes = "|".join(sorted({f for o in _all(top, commands) if o.takes_value and not o.choices for f in o.flags}))
    return "\n".join(
        [
            f"# bash completion for {PROG} (made by `{PROG} completion bash`)",
            "_tinyscheduler() {",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i flags_ words_',
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            f'        case "${{COMP_WORDS[i]}}" in {alternatives}) cmd="${{COMP_WORDS[i]}}"; break ;; esac',
            "    done",
            '    case "$prev" in',
            *values,
            f"        {takes}) return ;;  # a value: the shell's default (file names)",
            "    esac",
            '    case "$cmd" in',
            *cases,
            "    esac",
            '    [[ "$cur" == -* ]] && words_="$flags_"',
            '    COMPREPLY=($(compgen -W "$words_" -- "$cur"))',
            "}",
            f"complete -o default -F _tinyscheduler {PROG}",
            "",
        ]
    )


def _flags(options: tuple[Option, ...]) -> str:
    return " ".join(flag for o in options for flag in o.flags)


def _all(top: tuple[Option, ...], commands: tuple[Command, ...]) -> list[Option]:
    return [*top, *(o for c in commands for o in c.options)]


# --- zsh -------------------------------------------------------------------------------------------


def _zsh_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "'\\''").replace("[", "(").replace("]", ")").replace(":", " -")


def _zsh_spec(o: Option) -> list[str]:
    value = ""
    if o.takes_value:
        value = f":{_zsh_text(o.metavar or 'value')}:" + (f"({' '.join(o.choices)})" if o.choices else "_files")
    return [f"'{flag}[{_zsh_text(o.help)[:120]}]{value}'" for flag in o.flags]


def zsh(parser: argparse.ArgumentParser) -> str:
    top, commands = model(parser)
    lines = [f"#compdef {PROG}", f"# zsh completion for {PROG} (made by `{PROG} completion zsh`)", "_tinyscheduler() {"]
    lines += ["  local -a commands global", "  commands=("]
    lines += [f"    '{c.name}:{_zsh_text(c.help)}'" for c in commands]
    lines += ["  )", "  global=("]
    lines += [f"    {spec}" for o in top for spec in _zsh_spec(o)]
    lines += ["  )", "  _arguments -C $global '1: :->command' '*:: :->args'", "  case $state in"]
    lines += ["    command) _describe 'command' commands ;;", "    args)", "      case $words[1] in"]
    for c in commands:
        specs = [spec for o in c.options for spec in _zsh_spec(o)]
        specs += [
            f"'{i + 1}:{_zsh_text(metavar)}:" + (f"({' '.join(choices)})'" if choices else "_files'")
            for i, (metavar, _, choices) in enumerate(c.positionals)
        ]
        lines.append(f"        {c.name}) _arguments $global {' '.join(specs)} ;;")
    lines += ["      esac ;;", "  esac", "}", '_tinyscheduler "$@"', ""]
    return "\n".join(lines)


# --- fish ------------------------------------------------------------------------------------------


def _fish_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _fish_option(o: Option, condition: str) -> str:
    parts = [f"complete -c {PROG}"]
    if condition:
        parts.append(f"-n '{condition}'")
    for flag in o.flags:
        parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
    if o.choices:
        parts.append(f"-xa '{' '.join(o.choices)}'")
    elif o.takes_value:
        parts.append("-r -F")
    parts.append(f"-d '{_fish_text(o.help[:120])}'")
    return " ".join(parts)


def fish(parser: argparse.ArgumentParser) -> str:
    top, commands = model(parser)
    names = " ".join(c.name for c in commands)
    lines = [f"# fish completion for {PROG} (made by `{PROG} completion fish`)", f"complete -c {PROG} -f"]
    lines += [_fish_option(o, "") for o in top]
    for c in commands:
        lines.append(
            f"complete -c {PROG} -n 'not __fish_seen_subcommand_from {names}' -a {c.name} -d '{_fish_text(c.help)}'"
        )
        seen = f"__fish_seen_subcommand_from {c.name}"
        lines += [_fish_option(o, seen) for o in c.options]
        for _, helptext, choices in c.positionals:
            if choices:
                lines.append(f"complete -c {PROG} -n '{seen}' -xa '{' '.join(choices)}' -d '{_fish_text(helptext)}'")
    return "\n".join([*lines, ""])


SHELLS = {"bash": bash, "zsh": zsh, "fish": fish}


# --- the manual page -------------------------------------------------------------------------------


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _roff_options(options: tuple[Option, ...]) -> list[str]:
    lines = []
    for o in options:
        value = f" {o.metavar or '{' + ','.join(o.choices) + '}'}" if o.takes_value else ""
        lines += [".TP", f"\\fB{_roff(', '.join(o.flags))}\\fR{_roff(value)}", _roff(o.help)]
    return lines


def manual(parser: argparse.ArgumentParser, today: datetime | None = None) -> str:
    top, commands = model(parser)
    day = (today or datetime.now(UTC)).strftime("%Y-%m-%d")
    lines = [
        f'.TH TINYSCHEDULER 1 "{day}" "{PROG} {__version__}" "User Commands"',
        ".SH NAME",
        f"{PROG} \\- {_roff(_text(parser.description))}",
        ".SH SYNOPSIS",
        f"\\fB{PROG}\\fR [\\fIglobal options\\fR] \\fISUBCOMMAND\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        _roff(_text(parser.epilog)),
        ".SH GLOBAL OPTIONS",
        "These work before or after the subcommand.",
        *_roff_options(top),
        ".SH SUBCOMMANDS",
    ]
    for c in commands:
        usage = " ".join(f"\\fI{_roff(metavar)}\\fR" for metavar, _, _ in c.positionals)
        lines += [f".SS {c.name} {usage}".rstrip(), _roff(c.description or c.help)]
        lines += [f".TP\n\\fI{_roff(metavar)}\\fR\n{_roff(helptext)}" for metavar, helptext, _ in c.positionals]
        lines += _roff_options(c.options)
        if c.epilog:
            lines += [".PP", _roff(c.epilog)]
    lines += [
        ".SH FILES",
        "Settings are read from the first of: \\fB\\-\\-env\\-file\\fR, \\fB$TINYSCHEDULER_ENV_FILE\\fR, "
        "\\fI./.env\\fR, \\fI/etc/tinyscheduler/tinyscheduler.env\\fR.",
        ".SH SEE ALSO",
        "The README and docs/ of the project: configuration, operations, architecture.",
        "",
    ]
    return "\n".join(lines)
