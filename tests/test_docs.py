"""The docs a newcomer walks: the configuration reference is what the schema says (generated, so
it cannot drift), and every link between the pages leads somewhere."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_configuration_reference_is_generated_from_the_schema():
    from timedistill.conf.reference import reference

    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == reference(), "docs/configuration.md is stale: python -m timedistill.conf.reference > " \
                                   "docs/configuration.md"


def test_every_field_of_the_schema_says_what_it_is():
    from timedistill.conf.reference import reference

    empty = [line.split("|")[1].strip() for line in reference().splitlines()
             if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert not empty, f"fields without a comment in conf/schema.py: {empty}"


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_links_between_pages_lead_somewhere(page):
    broken = [target for target in LINK.findall(page.read_text())
              if "://" not in target and not (page.parent / target).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"
