"""The documentation site (mkdocs.yml, docs/) builds in strict mode, offline; every page is in the nav
and built; every screenshot is shown; the README is the front door and its links land on pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
IMG = DOCS / "img"


def _nav_pages(nav) -> list[str]:
    """Every page the nav lists, in order (nav entries are "page.md" or {title: page or [entries]})."""
    pages = []
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _html_of(site: Path, page: str) -> Path:
    """Where MkDocs (use_directory_urls, its default) writes a page: a.md -> a/index.html."""
    stem = page.removesuffix(".md")
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


@pytest.fixture(scope="module")
def nav(config) -> list[str]:
    return _nav_pages(config["nav"])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


def test_the_build_fetches_nothing_from_the_internet(config, site):
    assert config["theme"].get("font") is False, "theme.font: false, or the theme loads Google Fonts"
    assert [p for p in config.get("plugins", []) if p != "search"] == [], "a plugin may download at build time"
    external = set()
    for html in site.rglob("*.html"):
        text = html.read_text()
        external |= set(re.findall(r'<(?:script|img|iframe)\b[^>]*\bsrc="(https?://[^"]+)"', text))
        external |= set(re.findall(r'<link\b[^>]*\bhref="(https?://[^"]+)"', text))
    assert external == set()


def test_every_page_is_in_the_nav_once_and_built(nav, site):
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages, "every docs/ page in mkdocs.yml's nav exactly once, and no other"
    assert nav[0] == "index.md"
    missing = [page for page in nav if not _html_of(site, page).is_file()]
    assert missing == []


def test_every_page_is_reachable_from_the_home_page(nav, site):
    """Through the rendered navigation, not only the config: every page links to every nav page."""
    home = _html_of(site, "index.md").read_text()
    for page in nav[1:]:
        href = page.removesuffix(".md") + "/"
        assert f'href="{href}"' in home, page


def test_every_screenshot_is_shown_and_built(nav, site):
    shots = sorted(p.name for p in IMG.iterdir() if p.suffix == ".png")
    assert len(shots) >= 6
    shown = set()
    for page in nav:
        for src in re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', _html_of(site, page).read_text()):
            target = (_html_of(site, page).parent / src).resolve()
            assert target.is_file(), f"{page}: {src}"
            shown.add(target.name)
    assert [shot for shot in shots if shot not in shown] == []
    assert [shot for shot in shots if not (site / "img" / shot).is_file()] == []


def test_the_architecture_page_is_ARCHITECTURE_md(site):
    html = _html_of(site, "architecture.md").read_text()
    headings = [line.lstrip("#").strip() for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines()
                if line.startswith("## ")]
    assert headings and all(heading in html for heading in headings)


README_LINK = re.compile(r"\]\((docs/[^)#\s]+)(#[^)\s]*)?\)")


def test_the_readme_links_land_on_pages_and_name_every_page(nav, site):
    readme = (ROOT / "README.md").read_text()
    links = README_LINK.findall(readme)
    assert links
    for target, anchor in links:
        page = target.removeprefix("docs/")
        assert (ROOT / target).is_file(), target
        assert page in nav, f"{target} is not in the nav"
        if anchor:
            assert f'id="{anchor[1:]}"' in _html_of(site, page).read_text(), target + anchor
    assert sorted(set(nav) - {"index.md"} - {t.removeprefix("docs/") for t, _ in links}) == [], \
        "the README's 'Where to go next' names every page"
    assert not re.search(r"\]\((?!https?://|docs/|#)[^)]+\)", readme), "README links go to docs/ pages"


def test_the_readme_is_the_front_door():
    """The two commands first, then these sections in this order, and short."""
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections[0] == "The two commands"
    assert "make demo   #" in readme and "make test   #" in readme
    order = ["Point it at a real loyalty database", "Point it at MoEngage", "Backfills and reruns",
             "The SQL contract", "Troubleshooting", "Where to go next"]
    assert [s for s in sections if s in order] == order
    assert len(readme.splitlines()) < 200
