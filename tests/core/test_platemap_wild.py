"""Plate maps as labs really write them (adversarial cases): each test is a file a lab would write,
read through the public paths (``load_plate_map``, ``select_plate``, ``plate_map_for``)."""

import datetime as dt
import logging

import numpy as np
import openpyxl
import pytest

from neurorg_core.errors import PlateMapError
from neurorg_core.platemap import load_plate_map, plate_map_for, select_plate
from neurorg_core.schema import COMPOUND, DOSE, PLATE, ROLE, WELL


def write(tmp_path, text, name="map.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# --- multi-plate maps: plate names as the folder spells them ----------------------------------

def test_plate_of_a_multi_plate_map_is_found_whatever_its_case_and_spaces(tmp_path):
    pm = load_plate_map(write(tmp_path, (
        "Plate,Well,Role\nPlate_01,A01,control\nPlate_01,A02,disease\n"
        "PLATE_02,A01,disease\nPLATE_02,A02,control\n")))
    assert select_plate(pm, "plate_01") == "Plate_01"
    assert select_plate(pm, None, " plate_02 ") == "PLATE_02"
    assert select_plate(pm, "Plate_01", "plate_02") == "Plate_01"    # the first candidate wins
    run_map = plate_map_for(pm, ["A01", "A02"], plate=select_plate(pm, "plate_02"))
    assert run_map[ROLE].tolist() == ["disease", "control"]
    assert select_plate(pm, "plate_03") is None


def test_plate_names_that_differ_only_in_case_within_one_map_are_a_problem(tmp_path):
    with pytest.raises(PlateMapError) as err:
        load_plate_map(write(tmp_path, "Plate,Well,Role\nPlate_01,A01,control\nplate_01,A02,disease\n"))
    assert "'Plate_01'" in str(err.value) and "'plate_01'" in str(err.value) and "case" in str(err.value)


# --- column names as lab software writes them -------------------------------------------------

@pytest.mark.parametrize("plate, well, compound, role", [
    ("Plate ID", "Well ID", "Compound Name", "Well Role"),
    ("Plate Name", "Well Name", "Compound-Name", "Control Type"),
    ("Metadata Plate", "Metadata Well", "Metadata Compound", "Metadata Role"),
    ("plate", "Well Position", "Drug Name", "well type"),
])
def test_column_names_with_spaces_and_hyphens_are_the_aliases(tmp_path, plate, well, compound, role):
    pm = load_plate_map(write(tmp_path, f"{plate},{well},{compound},Dose (uM),{role}\n"
                                        "P1,A01,Cmpd X,0.5,treatment\nP1,A02,,,control\n"))
    assert pm[WELL].tolist() == ["A01", "A02"] and pm[PLATE].tolist() == ["P1", "P1"]
    assert pm[COMPOUND].tolist() == ["Cmpd X", ""] and pm[ROLE].tolist() == ["treatment", "control"]


def test_columns_that_are_not_used_are_named_in_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="neurorg_core.platemap")
    pm = load_plate_map(write(tmp_path, "Well,Treatment,Dose (uM),Role,Notes\nA01,Cmpd X,0.5,treatment,ok\n"))
    assert pm[COMPOUND].tolist() == [""]
    assert "'Treatment'" in caplog.text and "'Notes'" in caplog.text and "not used" in caplog.text


# --- title rows, comment rows ------------------------------------------------------------------

def test_title_and_comment_rows_above_the_header_are_skipped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="neurorg_core.platemap")
    pm = load_plate_map(write(tmp_path, (
        "Plate map: experiment 12 (LPS 20 uM),,\n"
        "# made by J. Doe 2024-01-05,,\n"
        ",,\n"
        "Well,Compound,Role\n"
        "A01,,control\n"
        "# A02 left out: bubble\n"
        "A03,,disease\n")))
    assert pm[WELL].tolist() == ["A01", "A03"]
    assert "line 4" in caplog.text          # the header line found, said
    assert "line 6" in caplog.text          # the comment line skipped, said


def test_xlsx_title_row_above_the_header(tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Plate map - experiment 12"])
    sheet.append([])
    sheet.append(["Well", "Compound", "Dose (uM)", "Role"])
    sheet.append(["A01", None, None, "control"])
    sheet.append(["A02", "X", 1.5, "treatment"])
    path = tmp_path / "map.xlsx"
    book.save(path)
    pm = load_plate_map(path)
    assert pm[WELL].tolist() == ["A01", "A02"] and pm[DOSE].iloc[1] == 1.5


def test_a_map_without_a_well_header_still_names_the_columns_of_its_first_row(tmp_path):
    with pytest.raises(PlateMapError, match="no well column.*Position, Role"):
        load_plate_map(write(tmp_path, "Position,Role\nA01,control\n"))


# --- Excel as labs keep it -----------------------------------------------------------------------

def test_xlsx_merged_cells_give_their_value_to_every_well_they_cover(tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Well", "Compound", "Dose (uM)", "Role"])
    for well, dose in [("B02", 0.1), ("B03", 1), ("B04", 10)]:
        sheet.append([well, "Cmpd X", dose, "treatment"])
    sheet.merge_cells("B2:B4")      # one compound name across three wells
    sheet.merge_cells("D2:D4")
    path = tmp_path / "merged.xlsx"
    book.save(path)
    pm = load_plate_map(path)
    assert pm[COMPOUND].tolist() == ["Cmpd X"] * 3 and pm[ROLE].tolist() == ["treatment"] * 3
    np.testing.assert_allclose(pm[DOSE], [0.1, 1, 10])


def test_xlsx_formula_without_a_saved_value_is_a_problem_not_a_blank(tmp_path):
    book = openpyxl.Workbook()      # openpyxl (like pandas) writes formulas without computing them
    sheet = book.active
    sheet.append(["Well", "Compound", "Dose (uM)", "Role"])
    sheet.append(["B02", "Cmpd X", 20, "treatment"])
    sheet.append(["B03", "Cmpd X", "=C2/10", "treatment"])
    path = tmp_path / "formula.xlsx"
    book.save(path)
    with pytest.raises(PlateMapError) as err:
        load_plate_map(path)
    assert "formula.xlsx" in str(err.value) and "C3" in str(err.value) and "=C2/10" in str(err.value)


def test_xlsx_reads_the_sheet_that_holds_the_map_not_a_notes_sheet_before_it(tmp_path, caplog):
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    book.active.append(["LPS batch 7, cells p12"])
    plate = book.create_sheet("Plate 1")
    plate.append(["Well", "Role"])
    plate.append(["B02", "control"])
    other = book.create_sheet("Plate 2")
    other.append(["Well", "Role"])
    other.append(["C03", "disease"])
    path = tmp_path / "book.xlsx"
    book.save(path)
    assert load_plate_map(path)[WELL].tolist() == ["B02"]
    assert "'Plate 1'" in caplog.text and "'Plate 2'" in caplog.text     # the choice is said


def test_xlsx_error_value_in_the_well_column_is_a_problem_not_a_comment(tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Well", "Role"])
    sheet.append(["B02", "control"])
    sheet.append(["#N/A", "disease"])    # a lookup formula that found nothing, as Excel saved it
    path = tmp_path / "lookup.xlsx"
    book.save(path)
    with pytest.raises(PlateMapError, match=r"lookup.xlsx: unknown well name.*line 3: '#N/A'"):
        load_plate_map(path)


# --- encodings Excel saves text in ---------------------------------------------------------------

def test_utf16_unicode_text_from_excel_is_read(tmp_path):
    # Excel's "Unicode Text (*.txt)": UTF-16 with a byte-order mark, tab-separated
    path = write(tmp_path, "\ufeffWell\tCompound\tDose (µM)\tRole\r\nB02\tCmpd µ-1\t0.5\ttreatment\r\n"
                           "B03\t\t\tcontrol\r\n", name="map.txt", encoding="utf-16-le")
    pm = load_plate_map(path)
    assert pm[WELL].tolist() == ["B02", "B03"] and pm[COMPOUND].iloc[0] == "Cmpd µ-1"
    assert pm[DOSE].iloc[0] == 0.5


def test_windows_latin_csv_with_micro_sign_is_read_and_says_so(tmp_path, caplog):
    # Excel's "CSV" on Windows: cp1252, where µ is one byte (0xB5), not UTF-8
    path = write(tmp_path, "Well,Compound,Dose (µM),Role\nB02,Café-1,0.5,treatment\n", encoding="cp1252")
    pm = load_plate_map(path)
    assert pm[DOSE].iloc[0] == 0.5 and pm[COMPOUND].iloc[0] == "Café-1"
    assert "map.csv" in caplog.text and "Windows-1252" in caplog.text


# --- decimal commas (European Excel) --------------------------------------------------------------

def test_semicolon_csv_with_decimal_commas_from_european_excel(tmp_path):
    pm = load_plate_map(write(tmp_path, (
        "Well;Compound;Dose (µM);Role\nB02;Cmpd X;0,005;treatment\nB03;Cmpd X;1,5;treatment\n"
        "B04;Cmpd X;20;treatment\nB05;Cmpd X;2,5 nM;treatment\nB06;Cmpd X;1,000;treatment\n")))
    np.testing.assert_allclose(pm[DOSE], [0.005, 1.5, 20.0, 0.0025, 1.0])   # never 15, never 1000


def test_tab_separated_decimal_commas_are_read_unless_they_could_be_thousands(tmp_path):
    pm = load_plate_map(write(tmp_path, "Well\tCompound\tDose (uM)\tRole\nB02\tX\t0,5\ttreatment\n",
                              name="map.tsv"))
    assert pm[DOSE].tolist() == [0.5]
    with pytest.raises(PlateMapError, match=r"decimal mark or a thousands separator.*line 2: '1,500'"):
        load_plate_map(write(tmp_path, "Well\tCompound\tDose (nM)\tRole\nB02\tX\t1,500\ttreatment\n",
                             name="amb.tsv"))


def test_decimal_comma_in_a_comma_separated_file_is_a_problem_with_a_hint(tmp_path):
    with pytest.raises(PlateMapError, match=r"decimal mark or a thousands separator.*line 2: '1,5'"):
        load_plate_map(write(tmp_path, 'Well,Compound,Dose (uM),Role\nB02,X,"1,5",treatment\n'))


# --- how labs write "nothing" ------------------------------------------------------------------

def test_na_dash_and_none_mean_no_dose_and_no_compound(tmp_path):
    pm = load_plate_map(write(tmp_path, (
        "Well,Compound,Dose (uM),Role\nB02,-,-,control\nB03,NA,N/A,disease\nB04,none,n/a,control\n"
        "B05,Cmpd X,0.5,treatment\nB06,,NaN,disease\n")))
    assert pm[COMPOUND].tolist() == ["", "", "", "Cmpd X", ""]
    assert pm[DOSE].isna().tolist() == [True, True, True, False, True]
    # a well with only "-" for compound and no role has no role: not a treatment of compound "-"
    with pytest.raises(PlateMapError, match=r"no role, class or compound.*line 2"):
        load_plate_map(write(tmp_path, "Well,Compound,Role\nB02,-,\n", name="norole.csv"))


# --- role spellings ------------------------------------------------------------------------------

def test_plain_role_spellings_are_the_roles(tmp_path):
    pm = load_plate_map(write(tmp_path, (
        "Well,Compound,Role\nB02,,Ctrl\nB03,,CTL\nB04,Cmpd X,Treated\nB05,Cmpd X,compound\n"
        "B06,, Control \nB07,,Disease\n")))
    assert pm[ROLE].tolist() == ["control", "control", "treatment", "treatment", "control", "disease"]


@pytest.mark.parametrize("typed", ["DMSO", "Vehicle", "untreated", "LPS", "blank", "Negative control"])
def test_roles_that_could_mean_control_or_disease_are_problems_that_explain_the_roles(tmp_path, typed):
    with pytest.raises(PlateMapError) as err:
        load_plate_map(write(tmp_path, f"Well,Compound,Role\nB02,,{typed}\nB03,,disease\n"))
    text = str(err.value)
    assert f"line 2: {typed!r}" in text                       # as typed, not lower-cased
    assert "unstimulated" in text and "stimulated" in text    # what control and disease mean here


# --- a unit column named plainly ---------------------------------------------------------------

@pytest.mark.parametrize("unit_header", ["Unit", "units", "Dose unit"])
def test_a_unit_column_beside_the_dose_gives_each_row_its_unit(tmp_path, unit_header):
    pm = load_plate_map(write(tmp_path, f"Well,Compound,Dose,{unit_header},Role\n"
                                        "B02,X,10,uM,treatment\nB03,X,100,nM,treatment\n"))
    np.testing.assert_allclose(pm[DOSE], [10.0, 0.1])      # not 100 µM


def test_a_unit_column_without_a_dose_column_is_not_taken_for_one(tmp_path):
    pm = load_plate_map(write(tmp_path, "Well,Role,Unit\nB02,control,lab 3\n"))
    assert pm[WELL].tolist() == ["B02"]


def test_a_loaded_map_matched_to_its_plate_warns_about_nothing(tmp_path, caplog):
    pm = load_plate_map(write(tmp_path, "Well,Role\nB02,control\nB03,disease\n"))
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="neurorg_core.platemap")
    assert plate_map_for(pm, ["B02", "B03"])[WELL].tolist() == ["B02", "B03"]
    assert caplog.text == ""


# --- a map that does not match the plate names its file --------------------------------------------

def test_a_map_that_does_not_match_the_imaged_wells_names_its_file(tmp_path):
    pm = load_plate_map(write(tmp_path, "Well,Role\nB02,control\nB03,disease\n", name="layout_07.csv"))
    with pytest.raises(PlateMapError) as err:
        plate_map_for(pm, ["B02", "B03", "B04"])
    assert str(err.value).startswith("layout_07.csv: imaged well(s) not in the plate map: B04")


def test_old_mac_csv_with_carriage_returns_only(tmp_path):
    # Excel's "CSV (Macintosh)": lines end in \r alone
    pm = load_plate_map(write(tmp_path, "Well,Role\rB02,control\rB03,disease\r"))
    assert pm[WELL].tolist() == ["B02", "B03"]


def test_xlsx_dates_as_plate_names_read_as_the_date(tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Plate", "Well", "Role"])
    sheet.append([dt.datetime(2024, 1, 5), "B02", "control"])
    sheet.append([dt.datetime(2024, 1, 6), "B02", "disease"])
    path = tmp_path / "dates.xlsx"
    book.save(path)
    pm = load_plate_map(path)
    assert pm[PLATE].tolist() == ["2024-01-05", "2024-01-06"]
    assert select_plate(pm, "2024-01-06") == "2024-01-06"


def test_duplicate_wells_name_the_lines_they_are_on(tmp_path):
    with pytest.raises(PlateMapError, match=r"duplicate well\(s\): B02 \(lines 2, 4\)"):
        load_plate_map(write(tmp_path, "Well,Role\nB2,control\nB03,disease\nb02,disease\n"))


@pytest.mark.parametrize("header, rows", [
    ("Row,Column,Role", ["B,2,control", "b,3,disease", "P,24,control"]),      # letters
    ("Row,Col,Role", ["2,2,control", "2,03,disease", "16,24,control"]),       # Harmony's numbers
])
def test_row_and_column_columns_instead_of_a_well_column(tmp_path, header, rows):
    pm = load_plate_map(write(tmp_path, header + "\n" + "\n".join(rows) + "\n"))
    assert pm[WELL].tolist() == ["B02", "B03", "P24"]
    assert pm[ROLE].tolist() == ["control", "disease", "control"]


def test_a_bad_row_or_column_is_named_with_its_line(tmp_path):
    with pytest.raises(PlateMapError, match=r"unknown well name\(s\) made of columns 'Row' and 'Column'.*"
                                            r"line 3: 'Bx'"):
        load_plate_map(write(tmp_path, "Row,Column,Role\nB,2,control\nB,x,disease\n"))


def test_a_plate_shaped_grid_is_refused_with_what_to_write_instead(tmp_path):
    grid = ",1,2,3\nA,control,control,disease\nB,Cmpd X,Cmpd X,disease\n"
    with pytest.raises(PlateMapError, match="plate-shaped grid.*one row per well"):
        load_plate_map(write(tmp_path, grid))


def test_a_thousands_point_in_a_semicolon_file_is_a_problem_not_read_as_a_decimal(tmp_path):
    # European Excel writes 1000 formatted with a thousands separator as 1.000
    with pytest.raises(PlateMapError, match=r"decimal mark or a thousands separator.*line 2: '1.000'"):
        load_plate_map(write(tmp_path, "Well;Compound;Dose (nM);Role\nB02;X;1.000;treatment\n"
                                       "B03;X;2,5;treatment\n"))
    pm = load_plate_map(write(tmp_path, "Well;Compound;Dose (nM);Role\nB02;X;0.005;treatment\n"
                                        "B03;X;12.5;treatment\n", name="points.csv"))
    np.testing.assert_allclose(pm[DOSE], [0.005e-3, 12.5e-3])   # cannot be thousands: read


def test_a_compound_id_beside_the_compound_name_is_not_a_clash(tmp_path):
    pm = load_plate_map(write(tmp_path, "Well,Compound,Compound ID,Role\nB02,Cmpd X,NRG-0001,treatment\n"))
    assert pm[COMPOUND].tolist() == ["Cmpd X"]


def test_a_role_that_contradicts_the_class_label_is_a_problem(tmp_path):
    with pytest.raises(PlateMapError) as err:
        load_plate_map(write(tmp_path, "Well,Role,Class\nB02,control,5\nB03,disease,0\nB04,control,0\n"
                                       "B05,disease,5\nB06,treatment,3\n"))
    text = str(err.value)
    assert "line 2: control, class 5" in text and "line 3: disease, class 0" in text
    assert "line 4" not in text and "line 5" not in text and "line 6" not in text


def test_a_dose_in_nm_is_the_same_number_as_written_in_um(tmp_path):
    # treatments are grouped by (compound, dose): 700 nM and 0.7 µM must be one dose, not 0.7000000000000001
    pm = load_plate_map(write(tmp_path, "Well,Compound,Dose,Unit,Role\nB02,X,700,nM,treatment\n"
                                        "B03,X,0.7,uM,treatment\nB04,X,0.0007,mM,treatment\n"
                                        "B05,X,30,nM,treatment\n"))
    assert pm[DOSE].tolist() == [0.7, 0.7, 0.7, 0.03]


def test_rows_without_a_plate_in_a_map_of_several_plates_are_named(tmp_path):
    # a plate name written once per block ("fill down" by eye), as lab sheets often are
    with pytest.raises(PlateMapError, match=r"no plate.*several plates.*line 3, line 5"):
        load_plate_map(write(tmp_path, "Plate,Well,Role\nP1,B02,control\n,B03,disease\n"
                                       "P2,B02,control\n,B03,disease\n"))


def test_xlsx_formula_that_excel_computed_as_empty_is_blank(tmp_path):
    # Excel saves =IF(...,"",...) as an empty value, which openpyxl reads as None, as it reads a
    # formula never computed; a sheet whose other formulas have values was computed
    import re
    import zipfile

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Well", "Compound", "Role"])
    sheet.append(["B02", '=IF(C2="control","","Cmpd X")', "control"])
    sheet.append(["B03", '=IF(C3="control","","Cmpd X")', "treatment"])
    raw = tmp_path / "raw.xlsx"
    book.save(raw)
    path = tmp_path / "computed.xlsx"
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(path, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":   # the values Excel would have saved
                xml = data.decode()
                xml = re.sub(r'<c r="B2"><f>(.*?)</f><v ?/></c>', r'<c r="B2" t="str"><f>\1</f><v></v></c>', xml)
                xml = re.sub(r'<c r="B3"><f>(.*?)</f><v ?/></c>', r'<c r="B3" t="str"><f>\1</f><v>Cmpd X</v></c>',
                             xml)
                data = xml.encode()
            out.writestr(item, data)
    pm = load_plate_map(path)
    assert pm[COMPOUND].tolist() == ["", "Cmpd X"]


def test_well_numbers_are_refused_with_why(tmp_path):
    with pytest.raises(PlateMapError, match=r"line 2: '1'.*numbered 1, 2, \.\.\. are not read.*by row or by column"):
        load_plate_map(write(tmp_path, "Well,Role\n1,control\n2,disease\n"))


@pytest.mark.parametrize("folder", ["Plate 01", "plate-01", "PLATE_1", " plate__01 "])
def test_folder_names_without_spaces_or_leading_zeros_find_their_plate(tmp_path, folder):
    pm = load_plate_map(write(tmp_path, "Plate,Well,Role\nPlate_01,B02,control\nPlate_10,B02,disease\n"))
    assert select_plate(pm, folder) == "Plate_01"
    assert select_plate(pm, "plate_100") is None


# --- the stimulus's concentration beside the compound's -----------------------------------------

def test_a_stimulus_concentration_beside_the_compound_dose_is_not_the_dose(tmp_path, caplog):
    pm = load_plate_map(write(tmp_path, "Well,Compound,Compound conc (uM),LPS conc (ng/mL),Role\n"
                                        "B02,Cmpd X,0.5,100,treatment\nB03,,,0,control\n"))
    np.testing.assert_allclose(pm[DOSE], [0.5, np.nan])
    assert "'LPS conc (ng/mL)'" in caplog.text            # said, not dropped in silence
    # without a dose column it is still a problem: a dose column is never dropped in silence
    with pytest.raises(PlateMapError, match="'LPS conc \\(ng/mL\\)' looks like a dose"):
        load_plate_map(write(tmp_path, "Well,Compound,LPS conc (ng/mL),Role\nB02,Cmpd X,100,treatment\n",
                             name="only.csv"))


def test_title_row_above_a_row_and_column_header(tmp_path):
    pm = load_plate_map(write(tmp_path, "Layout exported 2024-01-05,,\nRow,Column,Role\nB,2,control\n"))
    assert pm[WELL].tolist() == ["B02"]
