import numpy as np
import pandas as pd
import pytest

from neurorg_core.errors import PlateMapError
from neurorg_core.platemap import OUTPUT_COLUMNS, check_plate_map, load_plate_map
from neurorg_core.schema import CLASS, COL, COMPOUND, DOSE, PLATE, ROLE, ROW, WELL


def write(tmp_path, text, name="map.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_schema_columns(tmp_path):
    path = write(tmp_path, (
        "Metadata_Plate,Metadata_Well,Metadata_Compound,Metadata_Dose_uM,Metadata_Role,Metadata_Class\n"
        "P1,A01,,,control,0\nP1,A02,cmpd1,0.5,treatment,\nP1,A03,,,disease,5\n"
    ))
    df = load_plate_map(path)
    assert list(df.columns) == list(OUTPUT_COLUMNS)
    assert df[WELL].tolist() == ["A01", "A02", "A03"]
    assert df[ROW].tolist() == [1, 1, 1] and df[COL].tolist() == [1, 2, 3]
    assert df[PLATE].tolist() == ["P1"] * 3
    assert df[COMPOUND].tolist() == ["", "cmpd1", ""]
    assert np.isnan(df[DOSE].iloc[0]) and df[DOSE].iloc[1] == 0.5
    assert df[ROLE].tolist() == ["control", "treatment", "disease"]
    assert str(df[CLASS].dtype) == "Int64"
    assert df[CLASS].iloc[0] == 0 and df[CLASS].isna().iloc[1]


def test_tsv_aliases_and_well_spellings(tmp_path):
    path = write(tmp_path, (
        "Well\tcompound\tdose_uM\trole\tlabel\n"
        " a1 \tX\t1e-2\ttreatment\t\n"
        "B2\t\t\tControl\t0\n"
        "r03c12\t\t\tEMPTY\t\n"
    ), name="map.tsv")
    df = load_plate_map(path)
    assert df[WELL].tolist() == ["A01", "B02", "C12"]
    assert df[DOSE].iloc[0] == pytest.approx(0.01)
    assert df[ROLE].tolist() == ["treatment", "control", "empty"]
    assert df[COMPOUND].iloc[0] == "X"


def test_semicolon_and_plain_well_column(tmp_path):
    df = load_plate_map(write(tmp_path, "well;role\nA01;control\nA02;disease\n"))
    assert df[WELL].tolist() == ["A01", "A02"] and df[PLATE].tolist() == ["", ""]


def test_role_from_class_when_absent(tmp_path):
    df = load_plate_map(write(tmp_path, "Metadata_Well,class\nB02,0\nB03,5\nB04,2\n"))
    assert df[ROLE].tolist() == ["control", "disease", "treatment"]


def test_every_problem_in_the_file_is_listed_at_once(tmp_path):
    path = write(tmp_path, (
        "Metadata_Well,Metadata_Dose_uM,Metadata_Role,Metadata_Class\n"
        "A01,0.5,treatment,1\n"
        "zz9,abc,boss,9\n"
        "A01,,control,0\n"
        "A02,-1,,\n"
    ))
    with pytest.raises(PlateMapError) as info:
        load_plate_map(path)
    problems = info.value.problems
    text = " | ".join(problems)
    assert "map.csv" in str(info.value)
    assert "unknown well" in text and "'zz9'" in text and "line 3" in text
    assert "non-numeric dose" in text and "'abc'" in text
    assert "negative dose" in text
    assert "unknown role" in text and "control, disease, treatment, empty" in text
    assert "outside 0-5" in text and "'9'" in text
    assert "duplicate well(s): A01" in text
    assert "role is unknown" in text and "line 5" in text
    assert len(problems) == 7


def test_no_well_column_lists_columns(tmp_path):
    with pytest.raises(PlateMapError, match="no well column.*compound, dose"):
        load_plate_map(write(tmp_path, "compound,dose\nX,1\n"))


def test_unreadable_empty_and_missing(tmp_path):
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    with pytest.raises(PlateMapError, match="bin.csv: cannot read"):
        load_plate_map(bad)
    with pytest.raises(PlateMapError, match="empty"):
        load_plate_map(write(tmp_path, "  \n", name="empty.csv"))
    with pytest.raises(PlateMapError, match="nope.csv: no such plate map"):
        load_plate_map(tmp_path / "nope.csv")


def test_malformed_rows(tmp_path):
    with pytest.raises(PlateMapError, match="malformed"):
        load_plate_map(write(tmp_path, 'well,role\nA01,control\nA02,"unterminated\n'))


def test_two_columns_meaning_the_same(tmp_path):
    with pytest.raises(PlateMapError, match="'well' and 'Metadata_Well' both mean"):
        load_plate_map(write(tmp_path, "well,Metadata_Well\nA01,A01\n"))


def test_check_against_images(tmp_path):
    df = load_plate_map(write(tmp_path, (
        "Metadata_Well,Metadata_Role\nB02,control\nB03,disease\nB04,treatment\nH12,empty\n"
    )))
    problems = check_plate_map(df, ["B2", "B03", "C05"])
    assert problems == [
        "imaged well(s) not in the plate map: C05",
        "plate-map well(s) without images (mark them role 'empty' if intended): B04",
    ]
    assert check_plate_map(df, ["B02", "B03", "B04"]) == []   # H12 is empty: not needed


def test_check_raw_table_reports_content_problems_too():
    raw = pd.DataFrame({"well": ["A01", "A01", "Q99"], "dose_uM": ["1", "x", ""],
                        "role": ["control", "treatment", "weird"], "class": ["0", "7", ""]})
    text = " | ".join(check_plate_map(raw, ["A01"]))
    for needle in ("unknown well", "duplicate well(s): A01", "non-numeric dose", "unknown role",
                   "outside 0-5"):
        assert needle in text


def test_check_with_several_plates():
    raw = pd.DataFrame({"Metadata_Plate": ["P1", "P2"], "Metadata_Well": ["A01", "A01"],
                        "Metadata_Role": ["control", "control"]})
    assert "holds plates P1, P2" in " ".join(check_plate_map(raw, ["A01"]))
    assert check_plate_map(raw, ["A01"], plate="P2") == []
    assert "plate 'P3' is not in the map" in " ".join(check_plate_map(raw, ["A01"], plate="P3"))
