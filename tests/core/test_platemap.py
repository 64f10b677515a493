import numpy as np
import pandas as pd
import pytest

from neurorg_core.errors import PlateMapError
from neurorg_core.platemap import OUTPUT_COLUMNS, check_plate_map, load_plate_map, map_plates, plate_rows
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


@pytest.mark.parametrize("first,second", [("Role", "Metadata_Role"), ("compound", "Metadata_Compound"),
                                          ("plate", "Metadata_Plate")])
def test_two_text_columns_meaning_the_same_are_named_not_a_traceback(tmp_path, first, second):
    # the second column is dropped and named in the message (these once raised AttributeError /
    # ValueError from pandas, with two columns under one schema name)
    with pytest.raises(PlateMapError, match=f"'{first}' and '{second}' both mean") as err:
        load_plate_map(write(tmp_path, f"well,{first},{second}\nA01,control,control\n"))
    assert "map.csv" in str(err.value)


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


def test_multi_plate_maps_are_split_by_plate(tmp_path):
    """The app's plate choice lists and reduces a map with the same functions the pipeline uses
    (one home for "which plate of a multi-plate map": #12)."""
    path = tmp_path / "map.csv"
    pd.DataFrame({"plate": [" P1", "P1 ", "P2"], "well": ["A01", "A02", "A01"],
                  "role": ["control", "disease", "control"]}).to_csv(path, index=False)
    pm = load_plate_map(path)
    assert map_plates(pm) == ["P1", "P2"]
    assert list(plate_rows(pm, "P1")[WELL]) == ["A01", "A02"] and list(plate_rows(pm, "P2")[WELL]) == ["A01"]
    assert map_plates(pm.drop(columns=PLATE)) == []


# --- dose columns by name and unit ----------------------------------------------------------

@pytest.mark.parametrize("header, cells, expected_um", [
    ("Dose (µM)", ["0.5", "20"], [0.5, 20.0]),
    ("Dose (μM)", ["0.5", "20"], [0.5, 20.0]),        # Greek mu, as some keyboards type it
    ("Dose (uM)", ["0.5", "20"], [0.5, 20.0]),
    ("dose_uM", ["0.5", "20"], [0.5, 20.0]),
    ("Metadata_Dose_uM", ["0.5", "20"], [0.5, 20.0]),
    ("Concentration [nM]", ["500", "20000"], [0.5, 20.0]),
    ("dose_nM", ["500", "20000"], [0.5, 20.0]),
    ("conc_mM", ["0.0005", "0.02"], [0.5, 20.0]),
    ("Final concentration (mmol/L)", ["0.0005", "0.02"], [0.5, 20.0]),
    ("Conc. (pM)", ["500000", "2e7"], [0.5, 20.0]),
    ("Dose", ["500 nM", "20 µM"], [0.5, 20.0]),       # a unit in the cell itself
])
def test_dose_columns_by_name_and_unit_are_converted_to_um(tmp_path, header, cells, expected_um):
    path = write(tmp_path, f"well,compound,{header},role\nB02,X,{cells[0]},\nB03,Y,{cells[1]},\nB04,,,control\n")
    df = load_plate_map(path)
    np.testing.assert_allclose(df[DOSE].iloc[:2], expected_um, rtol=1e-12)
    assert np.isnan(df[DOSE].iloc[2])
    assert df[COMPOUND].tolist()[:2] == ["X", "Y"]


@pytest.mark.parametrize("header", ["Concentration", "Dose", "Metadata_Dose"])
def test_dose_without_unit_is_taken_as_um_and_says_so(tmp_path, caplog, header):
    with caplog.at_level("WARNING", logger="neurorg_core.platemap"):
        df = load_plate_map(write(tmp_path, f"well,compound,{header}\nB02,X,5\n"))
    assert df[DOSE].tolist() == [5.0]
    assert f"column '{header}' names no unit; its doses are taken as µM" in caplog.text


def test_twenty_four_treatments_are_not_pooled_into_four(tmp_path):
    # the field report: 4 compounds x 6 doses in a 'Dose (µM)' column came out as 4 treatments
    lines = ["Well,Compound,Dose (µM),Role"]
    wells = iter(f"{r}{c:02d}" for r in "BCDEFG" for c in range(2, 12))
    for compound in ("A", "B", "C", "D"):
        for dose in (0.01, 0.1, 0.3, 1, 3, 10):
            lines.append(f"{next(wells)},{compound},{dose},treatment")
    df = load_plate_map(write(tmp_path, "\n".join(lines) + "\n"))
    assert len(df.groupby([COMPOUND, DOSE])) == 24


def test_unit_column_gives_each_row_its_unit(tmp_path):
    df = load_plate_map(write(tmp_path, (
        "well,compound,Concentration,Concentration Unit,role\nB02,X,500,nM,\nB03,X,2,uM,\nB04,,,,empty\n")))
    np.testing.assert_allclose(df[DOSE].iloc[:2], [0.5, 2.0])
    with pytest.raises(PlateMapError, match=r"column 'Concentration Unit': unknown dose unit.*line 2: 'mg/ml'"):
        load_plate_map(write(tmp_path, "well,compound,Concentration,Concentration Unit\nB02,X,5,mg/ml\n"))


@pytest.mark.parametrize("header, cell, message", [
    ("Dose (mg/mL)", "5", r"column 'Dose \(mg/mL\)': unit 'mg/ml' is not a molar concentration"),
    ("Dose group", "high", r"column 'Dose group' looks like a dose .* 'group' is not a concentration unit"),
    ("Concentration [nM]", "high", r"column 'Concentration \[nM\]': non-numeric dose.*line 2: 'high'"),
    # 0,5 in this semicolon-separated file is European Excel's 0.5 (test_platemap_wild.py);
    # a thousands point with it is not read
    ("dose_uM", "1.000,5", r"column 'dose_uM': non-numeric dose.*line 2: '1.000,5'"),
    ("Dose", "5 mg", r"column 'Dose': non-numeric dose.*line 2: '5 mg'"),
])
def test_dose_column_that_cannot_be_understood_is_an_error(tmp_path, header, cell, message):
    path = write(tmp_path, f"well;compound;{header}\nB02;X;{cell}\n")
    with pytest.raises(PlateMapError, match=message):
        load_plate_map(path)


def test_two_dose_columns_are_an_error_not_a_choice(tmp_path):
    with pytest.raises(PlateMapError, match="columns 'Dose \\(uM\\)' and 'dose_nM' both mean Metadata_Dose_uM"):
        load_plate_map(write(tmp_path, "well,Dose (uM),dose_nM\nB02,1,1000\n"))


def test_loaded_map_checks_clean_again():
    raw = pd.DataFrame({"well": ["B02", "B03"], "Concentration [nM]": ["500", ""],
                        "role": ["treatment", "control"], "compound": ["X", ""]})
    assert check_plate_map(raw, ["B02", "B03"]) == []
    assert "not a molar concentration" in " ".join(
        check_plate_map(raw.rename(columns={"Concentration [nM]": "Dose (%)"}), ["B02", "B03"]))


# --- blank rows -------------------------------------------------------------------------------

def test_trailing_and_middle_blank_rows_are_skipped_with_true_line_numbers(tmp_path):
    path = write(tmp_path, (
        "well,compound,dose_uM,role\n"
        "B02,X,1,treatment\n"
        ",,,\n"
        "\n"
        "B03,,,control\n"
        "B04,,,\n"           # a well and nothing else is still a row: its role is unknown
        ",,,\n,,,\n , , , \n"
    ))
    with pytest.raises(PlateMapError) as info:
        load_plate_map(path)
    assert info.value.problems == [
        "no role, class or compound, so the role is unknown (allowed: control, disease, treatment, "
        "empty): line 6"]
    df = load_plate_map(write(tmp_path, path.read_text().replace("B04,,,", "B04,,,empty"), name="ok.csv"))
    assert df[WELL].tolist() == ["B02", "B03", "B04"]


def test_trailing_excel_columns_without_names_are_ignored(tmp_path):
    df = load_plate_map(write(tmp_path, "well,role,,\nB02,control,,\nB03,disease,,\n,,,\n"))
    assert df[ROLE].tolist() == ["control", "disease"]
    with pytest.raises(PlateMapError, match="header has 2 columns but line 3 has 3 cells"):
        load_plate_map(write(tmp_path, "well,role\nB02,control\nB03,disease,extra\n", name="long.csv"))


# --- Excel workbooks ----------------------------------------------------------------------------

def xlsx(path, sheets: dict) -> str:
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


def test_xlsx_plate_map_with_numbers_units_and_trailing_rows(tmp_path):
    rows = [["Well", "Compound", "Concentration [nM]", "Role", "Metadata_Plate"],
            ["B02", "X", 500, "treatment", 1],
            ["B03", "X", 20000.0, "treatment", 1],
            [None, None, None, None, None],
            ["B04", None, None, "control", 1],
            [None, None, None, None, None], [None, None, None, None, None]]
    df = load_plate_map(xlsx(tmp_path / "map.xlsx", {"Sheet1": rows}))
    assert df[WELL].tolist() == ["B02", "B03", "B04"]
    np.testing.assert_allclose(df[DOSE].iloc[:2], [0.5, 20.0])
    assert df[PLATE].tolist() == ["1", "1", "1"]   # an Excel number 1.0 is the plate name "1"
    assert df[ROLE].tolist() == ["treatment", "treatment", "control"]


def test_xlsx_picks_the_sheet_named_like_a_plate_map(tmp_path):
    path = xlsx(tmp_path / "book.xlsx", {
        "Notes": [["written by", "someone"]],
        "Plate Map": [["well", "role"], ["B02", "control"], ["B03", "disease"]],
    })
    assert load_plate_map(path)[WELL].tolist() == ["B02", "B03"]
    first = xlsx(tmp_path / "first.xlsx", {"Layout A": [["well", "role"], ["C05", "control"]],
                                           "Other": [["well", "role"], ["D06", "control"]]})
    assert load_plate_map(first)[WELL].tolist() == ["C05"]


def test_xlsx_problems_name_the_sheet_row(tmp_path):
    path = xlsx(tmp_path / "bad.xlsx", {"Sheet1": [[], ["Well", "Dose (uM)", "Role"],
                                                   ["B02", "lots", "treatment"]]})
    with pytest.raises(PlateMapError, match=r"bad.xlsx: column 'Dose \(uM\)': non-numeric dose.*line 3: 'lots'"):
        load_plate_map(path)


def test_broken_and_old_excel_files_are_clear_errors(tmp_path):
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(PlateMapError, match="broken.xlsx: cannot read the Excel workbook"):
        load_plate_map(broken)
    old = tmp_path / "old.xls"
    old.write_bytes(b"\xd0\xcf\x11\xe0 binary excel")
    with pytest.raises(PlateMapError, match="old.xls: old binary .xls workbooks are not read"):
        load_plate_map(old)
