import check_changelogs


def test_every_version_has_a_changelog_entry():
    assert check_changelogs.missing_entries() == []


def test_checker_flags_a_missing_entry(tmp_path):
    pkg = tmp_path / "packages" / "demo"
    (pkg / "src" / "demo").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text('[project]\nname = "demo"\ndynamic = ["version"]\n')
    (pkg / "src" / "demo" / "__init__.py").write_text('__version__ = "1.2.3"\n')
    (pkg / "CHANGELOG.md").write_text("# Changelog\n\n## 1.2.2\n")
    assert check_changelogs.missing_entries(tmp_path, ["demo"]) == [
        f"demo 1.2.3: no '## 1.2.3' heading in {pkg / 'CHANGELOG.md'}"
    ]
    (pkg / "CHANGELOG.md").write_text("# Changelog\n\n## 1.2.3\n")
    assert check_changelogs.missing_entries(tmp_path, ["demo"]) == []
