"""Every ``birdray <job> ...`` and ``python jobs/<job>.py ...`` command the READMEs show (in
code blocks, tables and inline code) names a real job and only flags its real parser has, so the
docs and the CLI cannot drift apart. Parser-level only: nothing runs."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

from birdray import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "cluster/README.md")
START = re.compile(
    r"(?:^|(?<=[\s/(]))(?:birdray\s+(?P<job>[^\s`]+)|(?P<py>python3?\s+)?jobs/(?P<script>[\w-]+)\.py)"
)
STOP = {"&&", "||", ";", "|", ">", "2>&1"}


def _units(text: str) -> list[tuple[int, str]]:
    """(line number, text) of each code-block line (``\\`` continuations joined) and each
    inline code span outside code blocks (a table's ``\\|`` read as ``|``)."""
    units: list[tuple[int, str]] = []
    fenced, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            line = re.sub(r"(^|\s)#.*", "", line)  # a shell comment is prose
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            units.append((start, pending + line))
            pending = ""
        else:
            units += [(number, span.replace("\\|", "|")) for span in re.findall(r"`([^`]+)`", line)]
    return units


def _script_job(script: str) -> str | None:
    path = ROOT / "jobs" / f"{script}.py"
    if not path.is_file():
        return None
    found = re.search(r'run_job\("([\w-]+)"\)', path.read_text())
    return found.group(1) if found else None


def commands() -> list[tuple[str, str, str, list[str]]]:
    """(where, shown text, job, tokens after the job) of every command in the docs."""
    found = []
    for doc in DOCS:
        for number, unit in _units((ROOT / doc).read_text()):
            for match in START.finditer(unit):
                job = match["job"] or _script_job(match["script"]) or f"jobs/{match['script']}.py"
                if job.startswith(("<", "#", "-")):  # `birdray <job>`, `birdray --version`
                    continue
                tokens = []
                for token in unit[match.end() :].split():
                    if token in STOP or token.startswith("#"):
                        break
                    tokens.append(token)
                found.append((f"{doc}:{number}", match.group(0), job, tokens))
    return found


@cache
def _parser(job: str):
    return cli.build_parser(job, cli.JOBS[job])[0]


def _options(job: str) -> frozenset[str]:
    return frozenset(_parser(job)._option_string_actions)


def _argv(tokens: list[str]) -> list[str]:
    """The shown tokens as an argv: optional ``[...]`` unwrapped, ``...`` a placeholder value."""
    argv = []
    for token in tokens:
        token = token.strip("[]")
        if token:
            argv.append("VALUE" if token == "..." else token)
    return argv


# Other programs' flags the docs show in inline code (ray start, ray job submit, pip).
FOREIGN_FLAGS = {"--dashboard-host", "--working-dir", "--extra-index-url"}


def test_the_docs_show_commands():
    jobs = {job for _, _, job, _ in commands()}
    assert {"train", "serve", "score", "registry", "benchmark"} <= jobs, jobs


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_parses(doc):
    """Each command through its job's real parser: a real job, no unknown flag, every value
    where the parser wants one (``--dashboard`` alone is a switch, not a flag missing a value)."""
    from birdray.config import UsageError

    wrong = []
    for where, shown, job, tokens in commands():
        if not where.startswith(doc + ":"):
            continue
        if job not in cli.JOBS:
            wrong.append(f"{where}: `{shown}` is no job (jobs: {', '.join(cli.JOBS)})")
            continue
        argv = [a for a in _argv(tokens) if a not in ("-h", "--help")]
        last = _parser(job)._option_string_actions.get(argv[-1]) if argv else None
        if not shown.startswith(("birdray", "python")) and last and last.nargs != 0:
            argv.append("VALUE")  # a table naming a script's flag (`jobs/train.py --registry`)
        try:
            _, unknown = _parser(job).parse_known_args(argv)
        except UsageError as exc:
            wrong.append(f"{where}: `{shown} {' '.join(tokens)}`: {exc}")
            continue
        if unknown:
            wrong.append(f"{where}: `{shown}` does not take {' '.join(unknown)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_the_prose_names_exists(doc):
    """A flag named on its own in the text (`--use-gpu`) is some job's flag."""
    known = set(FOREIGN_FLAGS).union(*(_options(job) for job in cli.JOBS))
    wrong = [
        f"{doc}:{number}: `{unit}`"
        for number, unit in _units((ROOT / doc).read_text())
        if unit.startswith("--") and unit.split()[0].split("=")[0] not in known
    ]
    assert not wrong, "\n".join(wrong)
