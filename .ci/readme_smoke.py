"""Run every command block of README.md, as written, in a fresh virtual environment.

CI (`.ci/run`) calls this after the unit tests; a failing README command fails CI. It copies the
checkout (tracked and untracked-but-not-ignored files, as a clone would hold them) into a
temporary folder, makes a fresh venv there and a fresh HOME (so `~/.flwr` and `~/.cache/fedlease`
start empty; pip's download cache is kept), and runs the README's fenced shell blocks (```bash,
```sh, ```shell, ```console) in README order (`after_install` blocks first, see below), one bash
process per block, from the copy's root.
Each line is one command (a line ending in a backslash continues on the next; no heredocs),
timed on its own; a command that fails stops its block and fails the smoke.

How each block is run is declared in `.ci/readme_commands.toml`, one `[[block]]` per README
block, keyed by the block's exact text:

    [[block]]
    readme = '''
    fedlease run --config examples/generation.toml
    '''
    replace = [["examples/generation.toml", "examples/generation.toml --quiet"]]  # optional
    check = "test -s runs/generation/summary.txt"                                # optional

* `readme`: the block's text exactly as in README.md (leading/trailing blank lines ignored).
* `replace`: how the block is shortened for CI, as [old, new] pairs applied in order; every
  `old` must occur in the block. Without it the block runs as written.
* `check`: bash run after the block (same folder, same venv); it must succeed, e.g. to show a
  run got through the clustering round.
* `not_run = "reason"`: the block is not executed (needs a GPU, a deployed SuperLink, data that
  cannot ship); the reason is printed in the output and the summary.
* `after_install = true`: the block runs right after the README's first block (its install
  command), while the venv holds exactly what that install gives a new user, before any later
  block installs an extra. The README's test command has it: the suite must pass (or skip, naming
  the missing package) under the README's install alone.

A README block with no entry, or an entry whose text is no longer in the README, fails the smoke
and the default test suite (tests/test_readme_commands.py), so the README and this smoke cannot
drift apart. To cover a new README command: write the block in README.md, run
`python .ci/readme_smoke.py --check`, paste the stub it prints into `.ci/readme_commands.toml`,
shorten it with `replace` (few clients, few rounds: `.ci/small.toml` is the built-in federation
made small) and add a `check` on what it writes. Later blocks see what earlier ones wrote (e.g.
`runs/latest` from `fedlease run`), as a reader following the README would.

    python .ci/readme_smoke.py                  # the whole smoke (20 min on 2 busy cores)
    python .ci/readme_smoke.py --check          # only: is every README block covered?
    python .ci/readme_smoke.py --only flower    # blocks whose text contains "flower" (the
                                                # venv still gets every install block first)

Standard library only: it runs on whatever Python CI has, before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COMMANDS = ROOT / ".ci" / "readme_commands.toml"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# a fence without a shell language whose lines start like this is a command block in disguise
COMMAND_WORDS = ("fedlease ", "pip ", "python ", "flwr ", "flower-", "export ", "bash ")
BLOCK_TIMEOUT_S = 30 * 60


@dataclass
class Block:
    """A fenced shell block of the README and how the smoke runs it."""

    line: int  # where it starts in README.md
    text: str
    replace: list[list[str]] = field(default_factory=list)
    check: str = ""
    not_run: str = ""
    after_install: bool = False

    def commands(self) -> list[str]:
        """The block's command lines as run (shortened), continuation lines joined."""
        text = self.text
        for old, new in self.replace:
            text = text.replace(old, new)
        commands, pending = [], ""
        for raw in text.splitlines():
            line = pending + raw.lstrip() if pending else raw
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1].rstrip() + " "
                continue
            pending = ""
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
        return commands


def readme_blocks(readme: Path = README) -> tuple[list[Block], list[str]]:
    """The README's fenced shell blocks, and problems: unclosed fences, commands in fences
    without a shell language."""
    blocks, problems = [], []
    lines = readme.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+|~~~+)\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        start, language = i, fence.group(2).lower()
        i += 1
        while i < len(lines) and not lines[i].startswith(fence.group(1)):
            i += 1
        if i == len(lines):
            problems.append(f"README.md:{start + 1}: fence never closed")
        body = "\n".join(lines[start + 1:i]).strip("\n")
        i += 1
        if language in SHELL_LANGUAGES:
            blocks.append(Block(start + 1, body))
            if "<<" in body:
                problems.append(f"README.md:{start + 1}: the smoke runs a block line by line, "
                                f"so it cannot hold a heredoc (<<); write the file with printf")
        elif any(line.lstrip().startswith(COMMAND_WORDS) for line in body.splitlines()):
            problems.append(f"README.md:{start + 1}: a ``` block holding commands has no shell "
                            f"language; mark it ```bash so the smoke runs it")
    return blocks, problems


def attach_smoke_entries(blocks: list[Block], commands: Path = COMMANDS) -> list[str]:
    """Give every block its entry in commands; return what does not match (both ways)."""
    entries = tomllib.loads(commands.read_text()).get("block", [])
    by_text = {}
    problems = []
    for entry in entries:
        text = entry.get("readme", "").strip("\n")
        unknown = set(entry) - {"readme", "replace", "check", "not_run", "after_install"}
        if unknown:
            problems.append(f"{commands.name}: entry {text[:60]!r}: unknown keys {sorted(unknown)}")
        by_text[text] = entry
    for block in blocks:
        entry = by_text.pop(block.text, None)
        if entry is None:
            problems.append(
                f"README.md:{block.line}: this block has no entry in .ci/readme_commands.toml; "
                f"add one (how to shorten it: see .ci/readme_smoke.py):\n\n[[block]]\n"
                f"readme = '''\n{block.text}\n'''\n")
            continue
        block.replace = entry.get("replace", [])
        block.check = entry.get("check", "")
        block.not_run = entry.get("not_run", "")
        block.after_install = entry.get("after_install", False)
        for pair in block.replace:
            if len(pair) != 2 or pair[0] not in block.text:
                problems.append(f"README.md:{block.line}: replace {pair!r}: expected [old, new] "
                                f"with old in the block")
    for text in by_text:
        problems.append(f"{commands.name}: entry for a block no longer in README.md:\n{text}")
    return problems


def covered_blocks(readme: Path = README, commands: Path = COMMANDS
                   ) -> tuple[list[Block], list[str]]:
    blocks, problems = readme_blocks(readme)
    problems += attach_smoke_entries(blocks, commands)
    if blocks and "pip install" not in blocks[0].text:
        problems.append(f"README.md:{blocks[0].line}: the first shell block must be the install "
                        "command (the smoke builds its fresh venv with it)")
    return blocks, problems


def run_order(blocks: list[Block]) -> list[Block]:
    """README order, but the ``after_install`` blocks right after the first (install) block, so
    they see the venv the README's install alone builds."""
    early = [b for b in blocks[1:] if b.after_install]
    return blocks[:1] + early + [b for b in blocks[1:] if not b.after_install]


# -- running -------------------------------------------------------------------------------

def copy_checkout(target: Path) -> None:
    """The files a clone would hold, plus uncommitted work: tracked and untracked files that
    git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout
    for name in sorted(set(listed.decode().split("\0")) - {""}):
        source = ROOT / name
        if source.is_file():  # deleted-but-tracked files are listed too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def smoke_environment(work: Path) -> dict[str, str]:
    """A fresh venv first on PATH and a fresh HOME; nothing of the caller's Python leaks in."""
    pip_cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"],
                               capture_output=True, text=True).stdout.strip()
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "XDG_CACHE_HOME", "FLWR_HOME"}}
    (work / "home").mkdir()
    env.update(HOME=str(work / "home"), VIRTUAL_ENV=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    if pip_cache and Path(pip_cache).is_dir():
        env["PIP_CACHE_DIR"] = pip_cache  # only downloads; installs still start from nothing
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def block_script(commands: list[str], times: Path) -> str:
    """Bash that runs the commands in one shell (exports and `&` carry over), stamps the time
    after each, and stops at the first that fails (&& lists included, unlike `set -e`)."""
    stamp = f"stamp() {{ echo \"$1 $(date +%s.%N)\" >> {shlex.quote(str(times))}; }}"
    lines = ["set -o pipefail", stamp, "stamp start"]
    for i, command in enumerate(commands):
        lines += [f"printf '\\n$ %s\\n' {shlex.quote(command)}", command,
                  f"rc=$?; [ $rc -eq 0 ] || {{ stamp fail-{i}; exit $rc; }}", f"stamp {i}"]
    return "\n".join(lines) + "\n"


def run_bash(script: str, cwd: Path, env: dict[str, str]) -> int:
    """Run in its own process group and end that group afterwards, so a server a block starts
    in the background (flower-superlink &) does not outlive it."""
    process = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return process.wait(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"timed out after {BLOCK_TIMEOUT_S} s", flush=True)
        return 124
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)


@dataclass
class Outcome:
    block: Block
    command: str
    status: str  # ok, FAILED (rc N), NOT EXECUTED: reason, not reached
    seconds: float | None


def run_block(block: Block, work: Path, env: dict[str, str]) -> list[Outcome]:
    commands = block.commands()
    print(f"\n{'=' * 100}\nREADME.md:{block.line}\n{block.text}", flush=True)
    if block.not_run:
        print(f"NOT EXECUTED: {block.not_run}", flush=True)
        return [Outcome(block, command, f"NOT EXECUTED: {block.not_run}", None)
                for command in commands]
    if block.replace:
        print("-- shortened for CI to:\n" + "\n".join(commands), flush=True)
    times = work / "times.txt"
    times.unlink(missing_ok=True)
    rc = run_bash(block_script(commands, times), work, env)
    stamps = dict(line.split() for line in times.read_text().splitlines()) if times.exists() else {}
    outcomes, last = [], float(stamps.get("start", 0))
    for i, command in enumerate(commands):
        done = stamps.get(str(i)) or stamps.get(f"fail-{i}")
        if done is None:
            status = "not reached"
        else:
            status = "ok" if str(i) in stamps else f"FAILED (rc {rc})"
        seconds = float(done) - last if done else None
        last = float(done) if done else last
        outcomes.append(Outcome(block, command, status, seconds))
    if rc == 0 and block.check:
        print(f"-- check: {block.check}", flush=True)
        started = time.monotonic()
        check_rc = run_bash(block.check, work, env)
        outcomes.append(Outcome(block, f"(check) {block.check}",
                                "ok" if check_rc == 0 else f"FAILED (rc {check_rc})",
                                time.monotonic() - started))
    elif rc != 0 and all(o.status == "ok" for o in outcomes):
        outcomes.append(Outcome(block, "(block)", f"FAILED (rc {rc})", None))
    return outcomes


def failed(outcome: Outcome) -> bool:
    return outcome.status.startswith(("FAILED", "not reached"))


def print_summary(outcomes: list[Outcome], total: float) -> None:
    print(f"\n{'=' * 100}\nREADME smoke: time per command\n")
    print(f"{'line':>5}  {'seconds':>8}  status / command")
    for o in outcomes:
        seconds = f"{o.seconds:8.1f}" if o.seconds is not None else " " * 8
        print(f"{o.block.line:>5}  {seconds}  {o.status:<12} {o.command}")
    failures = sum(failed(o) for o in outcomes)
    not_run = sum(o.status.startswith("NOT EXECUTED") for o in outcomes)
    print(f"\n{len(outcomes)} commands: {failures} failed, {not_run} not executed; "
          f"{total / 60:.1f} min in all")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only check that every README block has its smoke entry")
    parser.add_argument("--only", metavar="TEXT",
                        help="run only the blocks whose text contains TEXT (plus every block "
                             "that runs pip install, so the venv has what they need)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (must not exist) and keep it")
    args = parser.parse_args()

    blocks, problems = covered_blocks()
    if problems:
        print("README smoke: README.md and .ci/readme_commands.toml disagree:\n", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return 1
    if args.check:
        print(f"README smoke: all {len(blocks)} shell blocks of README.md are covered")
        return 0
    if args.only:
        blocks = [b for b in blocks if args.only in b.text or "pip install" in b.text]

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedlease-readme-"))
    work.mkdir(parents=True, exist_ok=bool(not args.keep))
    started = time.monotonic()
    outcomes: list[Outcome] = []
    try:
        copy_checkout(work / "checkout")
        env = smoke_environment(work)
        for block in run_order(blocks):
            block_outcomes = run_block(block, work / "checkout", env)
            outcomes += block_outcomes
            if "pip install" in block.text and any(failed(o) for o in block_outcomes):
                break  # what follows needs what this block installs
    finally:
        print_summary(outcomes, time.monotonic() - started)
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ran_all = len({id(o.block) for o in outcomes}) == len(blocks)
    return 0 if ran_all and not any(failed(o) for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
