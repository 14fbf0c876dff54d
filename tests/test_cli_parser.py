"""The command line a new user meets (issue 13, items 14 and 17): help without arguments, a help
line with its default for every option and the exit statuses for every command, global options
before or after the command, the unknown option blamed rather than its value, and shell
completion generated from the parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from notifier import cliparser

from .test_cli_support import Copy, copy_fixture, in_process_fixture, run, world_fixture  # noqa: F401


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command and action parser, by its full name (`outbox retry`)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child, sub in action.choices.items():
                    walk(sub, f"{name} {child}".strip())

    walk(cliparser.build_parser(), "")
    return found


def test_no_arguments_prints_the_help() -> None:
    ran = run()
    assert ran.code == 2
    assert ran.out.startswith("usage: smarterbot-notifier") and "commands:" in ran.out and "outbox" in ran.out


def test_every_option_has_help_with_its_default_and_every_command_its_exit_statuses() -> None:
    parsers = commands()
    assert {"run", "once", "check", "status", "outbox list", "outbox retry", "outbox purge", "leads", "replay",
            "state forget", "test-sink", "demo", "simulate", "completion"} <= set(parsers)
    for name, parser in parsers.items():
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if name and leaf:
            epilog = parser.epilog or ""
            assert "exit status:" in epilog and "2 usage or config error" in epilog, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert "default" in action.help, (name, action.dest, action.help)


@pytest.mark.parametrize("placement", ["before", "after the command", "after the action", "between"])
def test_global_options_go_before_or_after_the_command(copy: Copy, placement: str) -> None:
    options = ["--config", str(copy.config), "--log-level", "warning", "--log-format", "json"]
    args = {"before": [*options, "outbox", "list", "--dead"],
            "after the command": ["outbox", *options, "list", "--dead"],
            "after the action": ["outbox", "list", "--dead", *options],
            "between": ["--config", str(copy.config), "outbox", "list", "--log-level", "debug", "--dead"]}[placement]
    ran = run(*args)
    assert ran.code == 0, ran.err
    assert "1 dead delivery" in ran.out


def test_an_unknown_option_is_blamed_not_its_value() -> None:
    ran = run("leads", "--sinse", "7d", "--config", "nowhere.toml")
    assert ran.code == 2
    assert "unknown option --sinse (did you mean --since?)" in ran.err and "invalid choice" not in ran.err
    assert "unknown option --limt (did you mean --limit?)" in run("outbox", "list", "--limt=3").err


def test_demo_and_simulate_offer_no_config_they_would_ignore() -> None:
    for command in ("demo", "simulate", "completion"):
        assert "--config" not in commands()[command].format_help()
        ran = run(command, "--config", "x.toml", *(("bash",) if command == "completion" else ("--duration", "1")))
        assert ran.code == 2 and "unknown option --config" in ran.err
    ran = run("--config", "x.toml", "demo", "--duration", "1")
    assert ran.code == 2 and "demo reads no config file" in ran.err


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_is_generated_for_each_shell(shell: str, tmp_path: Path) -> None:
    ran = run("completion", shell)
    assert ran.code == 0, ran.err
    for word in ("smarterbot-notifier", "outbox", "retry", "--webhook-id", "--older-than"):
        assert word in ran.out, (shell, word)
    checker = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}[shell]
    if shutil.which(checker[0]) is None:
        pytest.skip(f"{shell} is not installed")
    script = tmp_path / f"completion.{shell}"
    script.write_text(ran.out)
    done = subprocess.run([*checker, str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers after `words` (the last one being completed), with the generated script."""
    line = " ".join(words)
    program = (f'source "{script}"; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE="{line}"; '
               f'COMP_POINT=${{#COMP_LINE}}; _shtab_smarterbot_notifier; printf "%s\\n" "${{COMPREPLY[@]}}"')
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_actions_and_options(tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    script.write_text(run("completion", "bash").out)
    assert complete(script, "smarterbot-notifier", "ou") == ["outbox"]
    assert set(complete(script, "smarterbot-notifier", "outbox", "")) == {"list", "retry", "purge"}
    assert complete(script, "smarterbot-notifier", "leads", "--we") == ["--webhook-id"]
    assert complete(script, "smarterbot-notifier", "completion", "") == ["bash", "zsh", "fish"]
    assert "--config" not in complete(script, "smarterbot-notifier", "demo", "--")


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_commands_and_options(tmp_path: Path) -> None:
    script = tmp_path / "completion.fish"
    script.write_text(run("completion", "fish").out)
    program = (f'source "{script}"; complete -C "smarterbot-notifier ou"; echo ---; '
               'complete -C "smarterbot-notifier leads --we"')
    done = subprocess.run(["fish", "--no-config", "-c", program], capture_output=True, text=True, timeout=30,
                          check=True)
    commands, options = done.stdout.split("---\n")
    assert [line.split("\t")[0] for line in commands.splitlines()] == ["outbox"]
    assert [line.split("\t")[0] for line in options.splitlines()] == ["--webhook-id"]
