"""Every shell block of README.md has its entry in CI's README smoke (.ci/readme_smoke.py), so
a README command cannot be added or changed without CI running it."""

import importlib.util
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
