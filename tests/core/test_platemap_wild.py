"""Plate maps as labs really write them (adversarial cases): each test is a file a lab would write,
read through the public paths (``load_plate_map``, ``select_plate``, ``plate_map_for``)."""

import logging

import numpy as np
import pandas as pd
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
