"""The documentation's guards: a short README, links that resolve, the CI command, generated tables.

Every fact has one home (docs/development.md): the README is a front door of at most 200 lines, each
topic has its page under docs/, and results tables are generated from the JSON beside their figures.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))
# pages written on other branches at the same time; they exist once those are merged
PENDING_PAGES: set[str] = set()  # pages linked before they exist (none today)

# [text](target) and ![alt](target); the target ends at whitespace or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _without_code(text: str) -> str:
    """Markdown with fenced code blocks and inline code removed (links inside code are not links)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(page: Path) -> list[tuple[str, str]]:
    """(path, anchor) of every link to a file of the repository ("" when there is no anchor)."""
    out = []
    for target in LINK.findall(_without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # a URL (https:, mailto:)
        path, _, anchor = target.partition("#")
        out.append((path or page.name, anchor))
    return out


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return out


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to a page under docs/"


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    missing = []
    for target, anchor in relative_links(page):
        path = (page.parent / target).resolve()
        if path.parent == ROOT / "docs" and path.name in PENDING_PAGES and not path.exists():
            continue
        if not path.exists():
            missing.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            missing.append(f"{target}#{anchor}")
    assert not missing, f"{page.relative_to(ROOT)} links to files or headings that do not exist: {missing}"


def test_link_checker_sees_links():
    # the checker itself: a page of links it must find, and code it must skip
    text = "see [a](docs/a.md#x), ![f](r/f.png) and [web](https://x.org); `[not](b.md)`\n```\n[no](c.md)\n```\n"
    assert LINK.findall(_without_code(text)) == ["docs/a.md#x", "r/f.png", "https://x.org"]
    assert "zebra-demo-the-readmes-main-job" in anchors(ROOT / "docs" / "benchmarks.md")


def _fenced_commands(text: str, language: str = "bash") -> list[str]:
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    joined = [block.replace("\\\n", " ") for block in blocks]  # lines continued with a backslash
    return [line.strip() for block in joined for line in block.splitlines() if line.strip()]


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_command = [line for line in ci if line.strip() and not line.startswith("#") and "pytest" in line]
    assert len(ci_command) == 1, ".ci/run should run one pytest command line"
    readme_tests = [c for c in _fenced_commands(README.read_text(encoding="utf-8")) if "pytest" in c]
    assert readme_tests == [ci_command[0].strip()], (
        "the README's test command must be exactly the command .ci/run runs")
    shlex.split(readme_tests[0])  # and it parses as a shell command line


def test_generated_tables_match_their_json(capsys):
    from zebra_llm.experiments import dca_quality as dq

    blocks = dq.build_report(dq.parse_args(["--report-only", "--no-figures", "--no-progress"]))
    capsys.readouterr()
    assert {"ppl_pydecimal", "passkey", "summary"} <= set(blocks), "the committed results give these tables"
    seen = set()
    for page in dq.DOC_PAGES:
        text = page.read_text(encoding="utf-8")
        seen.update(dq.generated_names(text))
        assert dq.fill_blocks(text, blocks, page=page.name) == text, (
            f"{page.relative_to(ROOT)}: a generated table differs from docs/results/dca_quality; run "
            "zebra experiment dca_quality --report-only --write-docs")
    assert set(blocks) <= seen, f"tables generated but shown nowhere: {sorted(set(blocks) - seen)}"


def test_fill_blocks_replaces_only_between_markers_and_refuses_unknown_blocks():
    from zebra_llm.experiments import dca_quality as dq

    begin, end = dq._marker("begin", "passkey"), dq._marker("end", "passkey")
    page = f"intro\n{begin}\nold table\n{end}\noutro\n"
    assert dq.fill_blocks(page, {"passkey": "| new |"}) == f"intro\n{begin}\n| new |\n{end}\noutro\n"
    with pytest.raises(ValueError, match="passkey is not produced"):
        dq.fill_blocks(page, {"summary": "x"}, page="page.md")
    with pytest.raises(ValueError, match="no end marker"):
        dq.fill_blocks(f"{begin}\nold\n", {"passkey": "x"})


def _documented_zebra_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every `zebra ...` line in the bash blocks of the README and docs/."""
    out = []
    for page in [README, *DOC_PAGES]:
        for line in _fenced_commands(page.read_text(encoding="utf-8")):
            words = shlex.split(line, comments=True)
            # `zebra ...`, `... && zebra demo`, `torchrun ... -m zebra_llm ...`
            starts = [i + 1 for i, w in enumerate(words)
                      if w == "zebra" and (i == 0 or words[i - 1] == "&&")
                      or w == "zebra_llm" and i > 0 and words[i - 1] == "-m"]
            if starts:
                out.append((page.name, words[starts[0]:]))
    return out


def test_documented_commands_and_options_exist():
    import importlib

    import typer

    from zebra_llm.cli import app
    from zebra_llm.experiments import OWN_OPTIONS

    documented = _documented_zebra_commands()
    assert len(documented) > 10, "the docs' command examples were not found"
    wrong = []
    for page, argv in documented:
        command, path = typer.main.get_command(app), ["zebra"]
        # groups have .commands (typer may vendor its own click, so no isinstance on click.Group)
        while hasattr(command, "commands") and argv and not argv[0].startswith("-"):
            if argv[0] not in command.commands:
                break
            path.append(argv[0])
            command, argv = command.commands[argv[0]], argv[1:]
        if hasattr(command, "commands"):
            wrong.append(f"{page}: {' '.join(path)} needs a subcommand, got {argv[:1]}")
            continue
        if path[-1] == "lm-eval":
            continue  # every argument goes to lm-evaluation-harness
        if path[-2:-1] == ["experiment"] and path[-1] in OWN_OPTIONS:  # its own argparse command line
            try:
                importlib.import_module(f"zebra_llm.experiments.{path[-1]}").parse_args(argv)
            except SystemExit:
                wrong.append(f"{page}: {' '.join(path)} does not take {' '.join(argv)}")
            continue
        known = {name for p in command.params for name in (*p.opts, *p.secondary_opts)}
        for word in argv:
            if word.startswith("-") and word.split("=", 1)[0] not in known:
                wrong.append(f"{page}: {' '.join(path)} has no option {word}")
    assert not wrong, "\n".join(wrong)


def test_extension_speed_tables_match_their_json():
    module = load_benchmark("extensions_speed")
    text = module.PAGE.read_text(encoding="utf-8")
    assert module.fill_page(text, module.docs_block()) == text, (
        "docs/extensions.md: the speed tables differ from docs/results/extensions/speed_*.json; run "
        "python benchmarks/extensions_speed.py --write-docs")
