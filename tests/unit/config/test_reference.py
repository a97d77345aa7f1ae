"""The generated parameter reference of docs/configuration.md (xaipipe.config.reference):
the committed page is what the code declares, and nothing declared is left out."""
import re

import pytest

from xaipipe.config import ROOT
from xaipipe.config import reference
from xaipipe.params import Param

PAGE = ROOT / "docs" / "configuration.md"


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


def _missing_schema_keys(text: str) -> list[str]:
    rows = set(text.splitlines())
    return [key for key, _, _ in reference.schema_keys()
            if not any(r.startswith(f"| `{key}` |") for r in rows)]


def _entry_block(text: str, title: str, entry: str) -> str | None:
    """The lines under ``#### `entry``` inside the ``### title`` section, or None."""
    section = text.split(f"\n### {title}\n", 1)
    if len(section) < 2:
        return None
    section = re.split(r"\n### ", section[1], maxsplit=1)[0]
    block = section.split(f"\n#### `{entry}`\n", 1)
    if len(block) < 2:
        return None
    return re.split(r"\n#{1,4} ", block[1], maxsplit=1)[0]


def _missing_params(text: str) -> list[str]:
    missing = []
    for section, (title, entries) in reference._sources().items():
        for entry, params in entries.items():
            block = _entry_block(text, title, entry)
            if block is None:
                missing.append(f"{section}.{entry}")
                continue
            lines = block.splitlines()
            missing += [f"{section}.{entry}.{name}" for name in params
                        if not any(r.startswith(f"| `{name}` |") for r in lines)]
            if not params and "No parameters." not in block:
                missing.append(f"{section}.{entry} (no 'No parameters.' line)")
    return missing


def test_the_committed_page_is_what_the_code_declares():
    committed = reference.generated_part(_page(), str(PAGE))
    assert committed == reference.parameter_tables(), (
        f"{PAGE.relative_to(ROOT)} is out of date with the schema or the Param declarations; "
        f"run `{reference.COMMAND}` and commit the page")


def test_every_schema_key_has_a_line_in_the_page():
    missing = _missing_schema_keys(_page())
    assert not missing, f"config keys without a line in docs/configuration.md: {missing}"


def test_every_declared_parameter_has_a_line_in_the_page():
    missing = _missing_params(_page())
    assert not missing, f"declared parameters without a line in docs/configuration.md: {missing}"


def test_the_registries_are_all_listed():
    """Every registered name of every registry appears, so a new registry entry shows up."""
    from xaipipe.data.datasets import DATASETS
    from xaipipe.data.filters import FILTERS
    from xaipipe.data.variants import VARIANTS
    from xaipipe.explain import available_methods
    from xaipipe.metrics import available_metrics
    sources = reference._sources()
    assert set(sources["methods"][1]) == set(available_methods())
    assert set(sources["metrics"][1]) == set(available_metrics())
    assert set(sources["datasets"][1]) == set(DATASETS.names()) >= {"shapes", "imagefolder",
                                                                    "imagenet"}
    assert set(sources["variants"][1]) == set(VARIANTS.names()) >= {"original", "jpeg", "blur"}
    assert set(sources["filters"][1]) == set(FILTERS.names()) >= {"all", "correct", "confident"}


def test_the_checks_name_what_a_page_leaves_out():
    """The two completeness checks fail, naming the key, when a row is missing."""
    text = _page()
    assert not _missing_schema_keys(text) and not _missing_params(text)
    no_keepbits = "\n".join(r for r in text.splitlines() if not r.startswith("| `explain.keepbits` |"))
    assert _missing_schema_keys(no_keepbits) == ["explain.keepbits"]
    block = _entry_block(text, reference._sources()["methods"][0], "integrated_gradients")
    row = next(r for r in block.splitlines() if r.startswith("| `rule` |"))
    assert _missing_params(text.replace(row + "\n", "", 1)) == ["methods.integrated_gradients.rule"]


def test_every_schema_key_has_a_description():
    blank = [key for key, node, _ in reference.schema_keys() if not node.get("description")]
    assert not blank, f"schema keys without a description: {blank}"


def test_a_row_shows_the_declaration():
    """Rows written by hand from the declarations: IG's ``Param(128, int, min=1)`` and the
    jpeg variant's ``Param(75, int, min=1, max=100)``; a pipe inside a doc is escaped."""
    text = _page()
    ig = _entry_block(text, reference._sources()["methods"][0], "integrated_gradients")
    assert "| `steps` | int | `128` | ≥ 1 | number of path segments m |" in ig.splitlines()
    jpeg = _entry_block(text, reference._sources()["variants"][0], "jpeg")
    assert "| `quality` | int | `75` | ≥ 1; ≤ 100 | JPEG quality |" in jpeg.splitlines()
    assert reference._param_table({"x": Param(None, (str, type(None)), ("a", "b"), doc="a|b")}) \
        .splitlines()[-1] == "| `x` | str or null | `null` | one of `a`, `b` | a\\|b |"
    assert "| `device` | str | `auto` | matches `^(auto\\|cpu\\|cuda(:[0-9]+)?)$` |" in text


def test_write_replaces_only_the_generated_part(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# Title\nbefore\n{reference.BEGIN}\nold\n{reference.END}\nafter\n")
    assert reference.write(page) is True
    text = page.read_text()
    assert text.startswith(f"# Title\nbefore\n{reference.BEGIN}\n")
    assert text.endswith(f"{reference.END}\nafter\n")
    assert reference.generated_part(text) == reference.parameter_tables()
    assert reference.write(page) is False                 # idempotent
    assert reference.main(["--write", str(page)]) == 0


def test_a_page_without_markers_is_an_error_naming_it(tmp_path, capsys):
    page = tmp_path / "plain.md"
    page.write_text("# no markers\n")
    with pytest.raises(ValueError, match="plain.md"):
        reference.write(page)
    assert reference.main(["--write", str(page)]) == 1
    assert "plain.md" in capsys.readouterr().err
    assert page.read_text() == "# no markers\n"            # left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["plain.md"]
