"""Every shell block of README.md has its entry in CI's README smoke (.ci/readme_smoke.py), so
a README command cannot be added or changed without CI running it."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("readme_smoke", ROOT / ".ci" / "readme_smoke.py")
smoke = sys.modules["readme_smoke"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(smoke)


def test_every_readme_shell_block_has_a_smoke_entry():
    blocks, problems = smoke.covered_blocks()
    assert not problems, "\n".join(problems)
    assert any("fedlease run" in b.text for b in blocks)


def write(tmp_path, readme, commands):
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "commands.toml").write_text(commands)
    blocks, problems = smoke.readme_blocks(tmp_path / "README.md")
    return blocks, problems + smoke.attach_smoke_entries(blocks, tmp_path / "commands.toml")


README = "# x\n\n```bash\nfedlease run \\\n  --rounds 9\nfedlease compare\n```\n\n```\nsrc/\n```\n"


def test_a_block_without_entry_and_an_entry_without_block_are_reported(tmp_path):
    _, problems = write(tmp_path, README, "[[block]]\nreadme = 'fedlease gone'\n")
    assert any("README.md:3: this block has no entry" in p for p in problems)
    assert any("entry for a block no longer in README.md" in p for p in problems)


def test_replace_must_find_its_text_and_continuations_are_joined(tmp_path):
    entry = "[[block]]\nreadme = '''\nfedlease run \\\n  --rounds 9\nfedlease compare\n'''\n"
    blocks, problems = write(tmp_path, README, entry + "replace = [['--rounds 9', '--rounds 2']]")
    assert not problems
    assert blocks[0].commands() == ["fedlease run --rounds 2", "fedlease compare"]
    _, problems = write(tmp_path, README, entry + "replace = [['--rounds 8', '--rounds 2']]")
    assert any("replace ['--rounds 8', '--rounds 2']" in p for p in problems)


@pytest.mark.parametrize("fence", ["```", "```text"])
def test_commands_in_a_fence_without_shell_language_are_reported(tmp_path, fence):
    _, problems = write(tmp_path, f"{fence}\npip install x\n```\n", "")
    assert problems == ["README.md:1: a ``` block holding commands has no shell language; mark "
                        "it ```bash so the smoke runs it"]


def test_a_heredoc_is_reported(tmp_path):
    _, problems = write(tmp_path, "```bash\ncat > f <<'EOF'\nx\nEOF\n```\n", "")
    assert any("cannot hold a heredoc" in p for p in problems)


def run(tmp_path, text, check=""):
    block = smoke.Block(1, text, check=check)
    return [(o.command, o.status) for o in smoke.run_block(block, tmp_path, dict(os.environ))]


def test_a_failing_command_in_an_and_list_fails_the_block_and_stops_it(tmp_path):
    assert run(tmp_path, "export X=1\nfalse && echo no\necho after") == [
        ("export X=1", "ok"), ("false && echo no", "FAILED (rc 1)"),
        ("echo after", "not reached")]


def test_exports_carry_over_and_checks_run(tmp_path):
    outcomes = run(tmp_path, "export X=1\ntest $X = 1 && touch made", check="test -e made")
    assert outcomes == [("export X=1", "ok"), ("test $X = 1 && touch made", "ok"),
                        ("(check) test -e made", "ok")]


def test_the_test_command_runs_right_after_the_install_before_any_extra_is_installed():
    blocks, _ = smoke.covered_blocks()
    order = smoke.run_order(blocks)
    assert "pip install" in order[0].text
    # the test tools, then the suite: no extra beyond them
    assert order[1].text == 'pip install -e ".[dev]" && python -m pytest'
    assert order[1].after_install
    assert sorted(b.line for b in order) == sorted(b.line for b in blocks)  # none left out


def test_the_first_block_must_be_the_install(tmp_path):
    commands = "[[block]]\nreadme = 'fedlease run'\n"
    (tmp_path / "README.md").write_text("```bash\nfedlease run\n```\n")
    (tmp_path / "commands.toml").write_text(commands)
    _, problems = smoke.covered_blocks(tmp_path / "README.md", tmp_path / "commands.toml")
    assert any("the first shell block must be the install command" in p for p in problems)


def test_a_server_started_in_the_background_does_not_outlive_its_block(tmp_path):
    run(tmp_path, "sleep 300 &\necho $! > pid")
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
