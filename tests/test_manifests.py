"""Manifests: CSV/JSONL round trips, relative paths, errors naming line and field, skipping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench import hookimpl
from workbench.data.manifests import builtin_manifest_formats, install_manifest_formats, read_manifest, validate_record, write_manifest
from workbench.errors import ManifestError


def study_records(folder: Path) -> list[dict]:
    return [
        {
            "id": "s1",
            "image": str(folder / "images" / "s1.dcm"),
            "mask": str(folder / "masks" / "s1.png"),
            "masks": {"nodule": str(folder / "masks" / "s1_nodule.png")},
            "report": "FINDINGS: Small left nodule, 1 cm.\nIMPRESSION: Nodule.",
            "label": 2,
            "labels": {"nodule": 1, "effusion": 0},
            "boxes": [{"phrase": "left nodule", "x": 10, "y": 20.5, "w": 8, "h": 9, "category": "nodule"}],
            "findings": ["nodule"],
            "split": "train",
        },
        {"id": "s2", "image": str(folder / "images" / "s2.dcm"), "report": "No acute finding.", "label": "normal", "boxes": [], "split": "val"},
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_round_trip_keeps_values_and_writes_relative_paths(tmp_path, suffix):
    folder = tmp_path / "dataset"
    records = study_records(folder)
    path = write_manifest(records, folder / f"manifest{suffix}")
    text = path.read_text()
    assert "images/s1.dcm" in text and "masks/s1_nodule.png" in text and str(folder) not in text  # relative on disk
    assert read_manifest(path, require=("image", "report")) == records


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    folder = tmp_path / "nested" / "data"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.png"
    (folder / "m.jsonl").write_text(
        json.dumps({"image": "img/a.png", "image_png": "../b.png", "fov": str(elsewhere), "report": "ok"}) + "\n"
    )
    (record,) = read_manifest(folder / "m.jsonl")
    assert record["image"] == str(folder / "img" / "a.png")
    assert Path(record["image_png"]).resolve() == (tmp_path / "nested" / "b.png")
    assert record["fov"] == str(elsewhere)
    assert record["id"] == "m-1"  # filled in from the line when absent
    write_manifest([record], tmp_path / "nested" / "copy.csv")
    assert "data/img/a.png" in (tmp_path / "nested" / "copy.csv").read_text()


CSV_HEADER = "id,image,report,label,boxes\n"


@pytest.mark.parametrize(
    "row, message",
    [
        ('a,x.png,ok,1,"[{""phrase"": ""nodule"", ""x"": 1, ""y"": 2, ""w"": 0, ""h"": 3}]"', "line 3, field 'boxes': box 0: w must be > 0"),
        ('a,x.png,ok,1,"[{""phrase"": ""nodule"", ""x"": -1, ""y"": 2, ""w"": 4, ""h"": 3}]"', "line 3, field 'boxes': box 0: x must be >= 0"),
        ('a,x.png,ok,1,"[{""x"": 1, ""y"": 2, ""w"": 4, ""h"": 3}]"', "line 3, field 'boxes': box 0: phrase must be a non-empty string"),
        ('a,x.png,ok,1,"[{""phrase"": ""p"", ""x"": ""1"", ""y"": 2, ""w"": 4, ""h"": 3}]"', "field 'boxes': box 0: x must be a finite number"),
        ("a,x.png,ok,1,[not json", "line 3, field 'boxes': not valid JSON"),
        ("a,,ok,1,", "line 3, field 'image': required but missing or empty"),
        ("a,x.png,,1,", "line 3, field 'report': required but missing or empty"),
        ("first,x.png,ok,1,", "line 3, field 'id': 'first' is also used on line 2"),
    ],
)
def test_csv_errors_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "manifest.csv"
    path.write_text(CSV_HEADER + "first,y.png,fine,0,\n" + row + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, require=("image", "report"))
    assert "manifest.csv" in str(caught.value)
    assert message in str(caught.value)


def test_line_numbers_survive_multiline_cells_and_blank_jsonl_lines(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('image,report\na.png,"line one\nline two"\n,missing image\n')
    with pytest.raises(ManifestError, match="line 4, field 'image'"):
        read_manifest(csv_path)
    jsonl_path = tmp_path / "m.jsonl"
    jsonl_path.write_text('{"image": "a.png"}\n\n{"image": "b.png", "label": 1.5}\n')
    with pytest.raises(ManifestError, match="line 3, field 'label': must be an integer or a string"):
        read_manifest(jsonl_path)
    jsonl_path.write_text('{"image": "a.png"}\n\n{"image": "c.png"\n')
    with pytest.raises(ManifestError, match="line 3: not valid JSON"):
        read_manifest(jsonl_path)


def test_on_error_skip_returns_good_records_and_reasons(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [
        {"image": "a.png", "report": "fine"},
        {"image": "b.png", "report": "   "},
        {"image": "c.png", "report": "fine", "boxes": [{"phrase": "p", "x": 0, "y": 0, "w": 2, "h": -1}]},
        {"image": "d.png", "report": "fine", "labels": ["not", "a", "dict"]},
        {"image": "e.png", "report": "fine", "label": "3"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    good, problems = read_manifest(path, require=("report",), on_error="skip")
    assert [Path(record["image"]).name for record in good] == ["a.png", "e.png"]
    assert good[1]["label"] == 3
    assert [line for line, _ in problems] == [2, 3, 4]
    assert "field 'report'" in problems[0][1] and "h must be > 0" in problems[1][1] and "field 'labels'" in problems[2][1]


def test_validate_record_lists_every_problem():
    record = {"image": 5, "report": None, "label": True, "boxes": [{"phrase": "p", "x": 0, "y": 0, "w": float("nan"), "h": 1}, "box"]}
    problems = validate_record(record, require=("image", "report"))
    assert problems == [
        "field 'report': required but missing or empty",
        "field 'image': must be a file path string, got int",
        "field 'label': must be an integer or a string, got True",
        "field 'boxes': box 0: w must be a finite number, got nan",
        "field 'boxes': box 1: must be an object with phrase, x, y, w, h",
    ]
    assert validate_record({"image": "/a.png", "boxes": []}, require=("boxes",)) == []


def read_tsv(path: Path) -> list[dict]:
    header, *rows = path.read_text().splitlines()
    keys = header.split("\t")
    return [{**dict(zip(keys, row.split("\t"))), "_line": number} for number, row in enumerate(rows, start=2)]


def test_a_plugins_manifest_format_is_read_by_extension(tmp_path):
    from workbench.host import create_plugin_manager

    class TsvPlugin:
        @hookimpl
        def workbench_register_datasets(self, catalog):
            catalog.add_manifest_format("tsv", read_tsv, description="tab-separated")

    path = tmp_path / "m.tsv"
    path.write_text("image\tlabel\nimgs/a.png\t4\n\t5\n")
    create_plugin_manager(autoload=False)
    with pytest.raises(ManifestError, match="unknown manifest format 'tsv'"):
        read_manifest(path)
    host = create_plugin_manager(autoload=False, extra_plugins=[("tsv-plugin", TsvPlugin())])
    assert host.datasets.manifest_formats.entry("tsv").plugin == "tsv-plugin"
    with pytest.raises(ManifestError, match="m.tsv: line 3, field 'image'"):
        read_manifest(path)
    records, skipped = read_manifest(path, on_error="skip")
    assert [record["label"] for record in records] == [4] and records[0]["image"] == str(tmp_path / "imgs" / "a.png")
    assert skipped == [(3, "field 'image': required but missing or empty")]
    with pytest.raises(ManifestError, match="unknown manifest format 'xml'"):
        read_manifest(tmp_path / "m.xml")


def test_a_second_csv_format_is_an_error_naming_both_plugins():
    from workbench.host import create_plugin_manager, failed_plugins

    class CsvAgain:
        @hookimpl
        def workbench_register_datasets(self, catalog):
            catalog.add_manifest_format("csv", read_tsv)

    host = create_plugin_manager(autoload=False, extra_plugins=[("csv-again", CsvAgain())])
    [failed] = failed_plugins(host)
    assert failed.name == "csv-again" and "'csv' is added by plugin 'builtin' and again by plugin 'csv-again'" in failed.error


def test_without_a_host_the_builtin_formats_are_read(tmp_path):
    install_manifest_formats(None)
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"image": "a.png", "label": 1}]))
    assert read_manifest(path)[0]["label"] == 1
    assert builtin_manifest_formats().names() == ["csv", "json", "jsonl"]
