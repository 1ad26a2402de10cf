"""Hub dataset manifests: every shipped one is valid offline, broken ones fail naming file and field."""

import string

import pytest
from typer.testing import CliRunner

from archdiff.cli import app
from archdiff.data.manifests import find_manifest, load_manifests, manifests_dir
from archdiff.data.sources import bundled_names
from archdiff.errors import UserError

SHIPPED = sorted(manifests_dir().glob("*.yaml"))

VALID = """\
name: {name}
id: someone/facades
kind: photo
columns: [image, style]
caption:
  template: "a {{style}} facade"
licence: CC0
url: https://huggingface.co/datasets/someone/facades
description: test facades
"""


def test_manifests_are_shipped_without_shadowing_the_datasets_package():
    assert len(SHIPPED) >= 3
    assert not (manifests_dir().parent / "__init__.py").exists()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_manifest_loads_and_its_caption_reads_declared_columns(path):
    manifest = find_manifest(path.stem)
    assert manifest is not None and manifest.name == path.stem
    assert manifest.url == f"https://huggingface.co/datasets/{manifest.id}"
    assert manifest.image_column in manifest.columns
    if manifest.caption.template:
        fields = {name for _, name, _, _ in string.Formatter().parse(manifest.caption.template) if name is not None}
        assert fields <= set(manifest.columns), f"{path.name}: template reads {fields - set(manifest.columns)}"
    else:
        assert manifest.caption.column in manifest.columns


def test_shipped_manifests_cover_facades_plans_and_styles():
    manifests = load_manifests()
    assert [m.name for m in manifests] == sorted(p.stem for p in SHIPPED)
    assert {"photo", "drawing"} <= {m.kind for m in manifests}
    assert "architectural-styles" in {m.name for m in manifests}


def test_loader_reads_a_given_folder(tmp_path):
    (tmp_path / "b-set.yaml").write_text(VALID.format(name="b-set"))
    (tmp_path / "a-set.yaml").write_text(VALID.format(name="a-set"))
    assert [m.name for m in load_manifests(tmp_path)] == ["a-set", "b-set"]


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    (tmp_path / "typo.yaml").write_text(VALID.format(name="typo") + "licenze: MIT\n")
    with pytest.raises(UserError, match=r"typo\.yaml.*unknown key 'licenze'"):
        load_manifests(tmp_path)


def test_caption_field_missing_from_columns_is_caught_offline(tmp_path):
    (tmp_path / "gap.yaml").write_text(VALID.format(name="gap").replace("{style}", "{storeys}"))
    with pytest.raises(UserError, match=r"gap\.yaml.*caption\.template fields storeys"):
        load_manifests(tmp_path)


def test_name_must_match_the_file(tmp_path):
    (tmp_path / "right.yaml").write_text(VALID.format(name="wrong"))
    with pytest.raises(UserError, match=r"right\.yaml.*'name' is 'wrong'"):
        load_manifests(tmp_path)


def test_find_manifest_ignores_hub_ids_and_unknown_names():
    assert find_manifest("Xpitfire/cmp_facade") is None
    assert find_manifest("no-such-set") is None


def test_data_list_shows_bundled_sets_and_every_manifest():
    result = CliRunner().invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    first_words = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert set(bundled_names()) >= {"facades", "plans"}
    assert set(bundled_names()) <= first_words
    assert {m.name for m in load_manifests()} <= first_words
    assert "Xpitfire/cmp_facade" in result.stdout
    assert "archdiff train --recipe facade-lora --data NAME" in result.stdout
