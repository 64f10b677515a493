import pytest

from neurorg_core.errors import NeuroRGError
from neurorg_core.wells import all_wells, format_well, normalize_well, parse_well, plate_format_for


@pytest.mark.parametrize(
    "text,expected",
    [("A01", (1, 1)), ("A1", (1, 1)), ("a01", (1, 1)), (" B02 ", (2, 2)), ("r01c01", (1, 1)),
     ("R16C24", (16, 24)), ("P24", (16, 24)), ("AF48", (32, 48)), ("AA01", (27, 1))],
)
def test_parse_well_accepts_every_spelling(text, expected):
    assert parse_well(text) == expected


@pytest.mark.parametrize("text", ["", "A", "01", "Z99", "BA01", "A-1", "r99c01"])
def test_parse_well_rejects_with_the_accepted_forms(text):
    with pytest.raises(NeuroRGError, match="A01"):
        parse_well(text)


def test_format_round_trip_over_1536_plate():
    wells = all_wells(1536)
    assert len(wells) == 1536 and wells[0] == "A01" and wells[-1] == "AF48"
    assert all(normalize_well(w) == w for w in wells)
    assert format_well(27, 3) == "AA03"


def test_plate_format_is_smallest_that_fits():
    assert plate_format_for(["B02", "G11"]) == 96
    assert plate_format_for(["A13"]) == 384
    assert plate_format_for([(17, 1)]) == 1536
