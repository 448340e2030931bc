import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_changelogs", ROOT / "tools" / "check_changelogs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_version_has_a_changelog_entry():
    assert _checker().missing_entries() == []


def test_checker_flags_a_missing_entry(tmp_path):
    pkg = tmp_path / "packages" / "demo"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "1.2.3"\n')
    (pkg / "CHANGELOG.md").write_text("# Changelog\n\n## 1.2.2\n")
    assert _checker().missing_entries(tmp_path) == [
        f"demo 1.2.3: no '## 1.2.3' heading in {pkg / 'CHANGELOG.md'}"
    ]
