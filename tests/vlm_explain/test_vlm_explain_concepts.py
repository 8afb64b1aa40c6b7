"""The concept bank: mining report phrases, the editable file, and `workbench explain-vlm concepts`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.data.manifests import write_manifest
from workbench.errors import ConfigError
from workbench.host import create_plugin_manager
from workbench_plugins.vlm_explain.concepts import mine_concepts, positive_statements, read_concept_bank, write_concept_bank

CORPUS = [
    "FINDINGS: There is a small right pleural effusion. No pneumothorax.\n\nIMPRESSION: Small right pleural effusion.",
    "FINDINGS: A large left pleural effusion is seen, blunting the costophrenic angle. Heart size is normal.",
    "FINDINGS: Moderate cardiomegaly is present. There is no pleural effusion.\n\nIMPRESSION: 1. Moderate cardiomegaly.",
    "FINDINGS: Mild cardiomegaly. Left pleural effusion blunting the costophrenic angle. The lungs are clear.",
    "FINDINGS: The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.",
]


def test_positive_statements_drop_headers_negations_and_wrappers():
    assert positive_statements(CORPUS[0]) == ["small right pleural effusion", "small right pleural effusion"]
    assert positive_statements(CORPUS[2]) == ["moderate cardiomegaly", "moderate cardiomegaly"]
    assert positive_statements("FINDINGS: No acute osseous abnormality. There is no focal nodule.") == []


def test_mined_concepts_are_frequent_positive_phrases_without_dangling_words():
    mined = dict(mine_concepts(CORPUS, min_count=2))
    assert mined["pleural effusion"] == 3  # three reports assert an effusion; the two negations do not count
    assert mined["cardiomegaly"] == 2 and mined["lungs are clear"] == 2 and mined["heart size is normal"] == 2
    assert mined["blunting the costophrenic angle"] == 2
    assert "costophrenic angle" not in mined  # never seen outside the longer phrase: the longer one is kept
    assert all(count >= 2 for count in mined.values())
    assert not {"small", "right", "left pleural", "pneumothorax", "no pleural effusion"} & set(mined)
    counts = list(mined.values())
    assert counts == sorted(counts, reverse=True)
    with pytest.raises(ConfigError, match="no concept occurs in 9 or more reports"):
        mine_concepts(CORPUS, min_count=9)


def test_the_bank_file_round_trips_with_comments_and_refuses_an_empty_bank(tmp_path):
    path = write_concept_bank(tmp_path / "bank.txt", [("pleural effusion", 3), ("cardiomegaly", 2)], header="mined for a test")
    path.write_text(path.read_text() + "\n  enlarged  cardiac silhouette  \nCardiomegaly\n# a comment line\n")
    assert read_concept_bank(path) == ["pleural effusion", "cardiomegaly", "enlarged cardiac silhouette"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# only comments\n\n   \n")
    with pytest.raises(ConfigError, match=r"empty\.txt: the concept bank is empty"):
        read_concept_bank(empty)
    with pytest.raises(ConfigError, match="concept bank file not found"):
        read_concept_bank(tmp_path / "missing.txt")


def test_concepts_command_mines_the_training_reports_of_a_manifest(tmp_path):
    records = [{"id": f"r{i}", "image": "unused.png", "report": report, "split": "train" if i < 4 else "test"}
               for i, report in enumerate(CORPUS)]
    manifest = write_manifest(records, tmp_path / "reports.jsonl")
    host = create_plugin_manager()
    out = tmp_path / "concepts.txt"
    result = CliRunner().invoke(build_cli(host), ["explain-vlm", "concepts", "--manifest", str(manifest), "--out", str(out),
                                                  "--min-count", "2", "--split", "train"], obj=host)
    assert result.exit_code == 0, result.output
    bank = read_concept_bank(out)
    assert "pleural effusion" in bank and "cardiomegaly" in bank
    assert "lungs are clear" not in bank  # only one training report says it; the test report is left out
    assert out.read_text().startswith("# Concept bank mined from 4 reports")
