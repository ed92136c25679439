"""The docs cannot drift silently: every command, option, environment variable, make target
and API route that README.md and docs/ name must exist, and every variable the product reads
must be in the configuration table of docs/operations.md.

CHANGELOG.md is history and may name what no longer exists, so it is left out.
"""

import re

import click
import pytest

from services.cli import main
from tests.factories import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
ENV_NAME = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"
# Read by the product (os.environ / env .get, [..], setdefault), in any quoting.
READS = re.compile(r"(?:environ|env)\s*(?:\.get\(|\.setdefault\(|\[)\s*[\"'](" + ENV_NAME + r")[\"']")
# Set by the product itself for a library, not configuration an operator chooses.
NOT_CONFIGURATION = {"CUBLAS_WORKSPACE_CONFIG"}


def snippets(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return CODE_SPAN.findall(FENCE.sub("", text)) + lines


def commands(text: str) -> list[str]:
    """Every `dermatriage ...` command line, comments cut off."""
    out = []
    for snippet in snippets(text):
        for match in re.finditer(r"(?:^|[\s;|(])(dermatriage\s[^#;]*)", snippet):
            out.append(match.group(1).strip())
    return out


def resolve(line: str) -> tuple[click.Command, list[str]]:
    """The command a line names and the tokens after it; alternatives (``a|b``) must all exist."""
    command: click.Command = main
    tokens = line.split()[1:]
    while tokens and isinstance(command, click.Group):
        names = tokens[0].strip("[]()").split("|")
        if names[0].startswith("-") or names[0].isupper() or names[0] in ("...", "…"):
            break
        missing = [n for n in names if n not in command.commands]
        assert not missing, f"`{line}`: no command {' '.join(missing)} under `{command.name}`"
        command, tokens = command.commands[names[0]], tokens[1:]
    return command, tokens


def options_of(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def documented(pattern) -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), item) for path in DOCS for item in pattern(path.read_text())]


def product_reads() -> set[str]:
    names = set()
    for package in ("services", "web", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(READS.findall(path.read_text()))
    return names


def compose_variables() -> set[str]:
    return set(re.findall(r"\$\{(" + ENV_NAME + r")", (ROOT / "docker-compose.yml").read_text()))


def variables(text: str) -> list[str]:
    found = []
    for snippet in snippets(text):
        found += re.findall(r"^(" + ENV_NAME + r")(?:=\S*)?$", snippet.strip())
        found += re.findall(r"(?:^|\s)(" + ENV_NAME + r")=", snippet)
    return found


def test_every_documented_command_and_option_exists():
    lines = documented(commands)
    assert len(lines) > 40, "the docs name the product's commands"
    problems = []
    for where, line in lines:
        try:
            command, tokens = resolve(line)
        except AssertionError as exc:
            problems.append(f"{where}: {exc}")
            continue
        known = options_of(command)
        for token in tokens:
            for part in token.strip("[](),").split("|"):
                flag = part.split("=")[0].strip("[](),")
                if flag.startswith("--") and flag not in known:
                    problems.append(f"{where}: `{line}`: `dermatriage ... {command.name}` has no option {flag}")
    assert problems == []


def test_every_documented_variable_is_read_by_the_product_or_compose():
    known = product_reads() | compose_variables()
    unknown = sorted({f"{where}: {name}" for where, name in documented(variables) if name not in known})
    assert unknown == []


def test_every_variable_the_product_reads_is_in_the_configuration_table():
    table = (ROOT / "docs" / "operations.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(" + ENV_NAME + r")`", table))
    assert sorted(product_reads() - NOT_CONFIGURATION - named) == []


def test_every_documented_make_target_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = documented(lambda text: [m for s in snippets(text) for m in re.findall(r"\bmake ([a-z][a-z-]*)", s)])
    assert named, "the docs name make targets"
    assert sorted({f"{where}: make {t}" for where, t in named if t not in targets}) == []


def placeholders(path: str) -> str:
    """A route or documented path as a pattern: every ``<name>`` stands for one segment."""
    return re.sub(r"<[^>]+>", "[^/]+", re.escape(path).replace(r"\<", "<").replace(r"\>", ">"))


def api_paths(text: str) -> list[str]:
    """``/api/v1/...``, ``/fhir/...`` and ``/dicomweb/...`` paths, and ``…/...`` ones that
    abbreviate a route's beginning."""
    paths = []
    for snippet in snippets(text):
        for path in re.findall(r"(?:/api/v1|(?<![\w:/.$])/(?:fhir|dicomweb)(?=[/\s`?]|$)|(?<![\w:/])…)/?[^\s`?\"'\[,]*",
                               snippet):
            paths.append(path.rstrip("/.:)"))
    return paths


def test_every_documented_api_route_exists():
    from web import create_app
    rules = [re.sub(r"<[^>]+>", "x", r.rule) for r in create_app().url_map.iter_rules()]
    named = documented(api_paths)
    assert len(named) > 20, "the docs name the API's routes"
    missing = []
    for where, path in named:
        pattern = re.compile(("" if path.startswith("…") else "^") + placeholders(path.lstrip("…")) + "$")
        if not any(pattern.search(rule) for rule in rules):
            missing.append(f"{where}: {path}")
    assert missing == []


@pytest.mark.parametrize("line,problem", [
    ("dermatriage model fly", "no command fly"),
    ("dermatriage db upgrade|sideways", "no command sideways"),
])
def test_the_check_finds_a_command_that_does_not_exist(line, problem):
    with pytest.raises(AssertionError, match=problem):
        resolve(line)


def test_the_checks_see_options_and_variables():
    command, tokens = resolve("dermatriage model train --views 2 [--no-lesion]")
    assert command.name == "train" and "--no-lesion" in options_of(command) and "--fly" not in options_of(command)
    assert sorted(variables("`DERMATRIAGE_DATA_DIR=/x dermatriage run` and `QUEUE_CACHE_S`")) == [
        "DERMATRIAGE_DATA_DIR", "QUEUE_CACHE_S"]
    assert "DERMATRIAGE_MODELS_DIR" in product_reads() and "MINIO_BUCKET" in product_reads()
