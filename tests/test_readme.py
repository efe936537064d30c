"""The README's set-up commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Set up and run (fresh machine)", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_setup_commands()
    assert len(commands) == 2
    assert commands[1].endswith("python -m pytest")
    ci_lines = (ROOT / ".ci/run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci_lines


def test_the_first_setup_command_runs_the_example_graph_on_the_embedded_default():
    first = readme_setup_commands()[0]
    assert "agentgraph run customer-support" in first
    assert "--slm-url" not in first, "the embedded SLM is the default: nothing to start"
