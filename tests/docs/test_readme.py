"""README.md stays a short front door whose links, pictures and configuration example all work.

The documentation site under docs/ is checked by `make docs` (`mkdocs build --strict`); README.md is outside
that site, so these tests check it the way a reader on the repository's front page meets it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (the docs site) and GitHub give a plain heading."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: str) -> set[str]:
    return {_slug(h) for h in _HEADING.findall(_FENCE.sub("", markdown))}


def broken_links(markdown: str, base: Path) -> list[str]:
    """Each relative link or image of `markdown` whose file, or whose heading anchor, does not exist."""
    broken = []
    for target in _LINK.findall(_FENCE.sub("", markdown)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else None
        if file is not None and not file.exists():
            broken.append(f"{target}: no file {path}")
            continue
        if anchor and (file is None or file.suffix == ".md"):
            text = file.read_text(encoding="utf-8") if file is not None else markdown
            if anchor not in _anchors(text):
                broken.append(f"{target}: no heading with anchor #{anchor}")
    return broken


def test_readme_is_a_short_front_door_with_the_two_commands() -> None:
    """At most 300 lines, and the two commands a newcomer needs are there to copy."""
    text = README.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= 300, f"README.md has {lines} lines; move the detail into a page under docs/"
    fences = _FENCE.findall(text)
    assert any("make demo" in f and "make test" in f for f in fences), "make demo / make test not in a block"


def test_every_readme_link_and_picture_resolves() -> None:
    """Each relative link and image of README.md names an existing file, and heading if it names one."""
    assert broken_links(README.read_text(encoding="utf-8"), ROOT) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    """The checker above is not vacuous: it reports a missing page, a missing anchor and a missing picture."""
    (tmp_path / "page.md").write_text("# Page\n\n## Real section\n")
    markdown = (
        "# Top\n\n[ok](page.md#real-section) [ok](#top) [web](https://example.com/x)\n"
        "[gone](nope.md) [bad](page.md#no-section) ![pic](img/missing.png) [self](#nowhere)\n"
        "```\n[not a link](inside-a-fence.md)\n```\n"
    )
    assert broken_links(markdown, tmp_path) == [
        "nope.md: no file nope.md",
        "page.md#no-section: no heading with anchor #no-section",
        "img/missing.png: no file img/missing.png",
        "#nowhere: no heading with anchor #nowhere",
    ]


def test_readme_minimal_configuration_passes_check_config(tmp_path: Path) -> None:
    """The README's minimal configuration is accepted by `watcher check-config`, with its secrets masked."""
    text = README.read_text(encoding="utf-8")
    toml_blocks = re.findall(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert toml_blocks, "README.md has no TOML configuration example"
    config = tmp_path / "watcher.toml"
    config.write_text(toml_blocks[0])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no WATCHER_* from the caller's environment
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "your-oration-token" not in result.stdout and 'token = "********"' in result.stdout
