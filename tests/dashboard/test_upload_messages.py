"""Messages of Upload & score show what the user typed literally."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard_fixtures import APP, shown

CRAFTED = "no_such **model** [x](evil.example)"


def test_a_model_path_that_cannot_be_used_is_quoted_as_plain_text(app_env: Path, tiny_plate: Path) -> None:
    """Every other message escapes what users supply (``components.plain``); this one put the
    typed path into Markdown as it was: bold text and a link in an error box."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["page"] = "upload"
    at.run()
    at.text_input(key="server_images").set_value(str(tiny_plate))
    at.text_input(key="server_platemap").set_value(str(tiny_plate / "platemap.csv"))
    at.button(key="use_server_path").click().run()
    at.text_input(key="add_bundle_path").set_value(str(tiny_plate.parent / CRAFTED))
    at.button(key="add_bundle").click().run()
    assert not at.exception
    message = at.error[0].value
    assert message.startswith("That model cannot be used")
    assert CRAFTED in shown(message) and CRAFTED not in message  # escaped, and reads as typed


def test_a_map_without_disease_wells_is_flagged_before_scoring(app_env: Path, tiny_plate: Path,
                                                               tmp_path: Path) -> None:
    """A map whose disease wells were typed as treatment was 'matching the images' with no word of
    warning; only after scoring did every page say plate QC, rescue % and hits cannot be made."""
    lines = (tiny_plate / "platemap.csv").read_text().splitlines()
    no_disease = tmp_path / "no_disease.csv"
    no_disease.write_text("\n".join(l.replace(",disease", ",treatment") for l in lines) + "\n")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["page"] = "upload"
    at.run()
    at.text_input(key="server_images").set_value(str(tiny_plate))
    at.text_input(key="server_platemap").set_value(str(no_disease))
    at.button(key="use_server_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    warned = [w.value for w in at.warning if "disease" in w.value]
    assert warned and "rescue %" in warned[0] and "disease 0" in shown(warned[0]), [w.value for w in at.warning]
    assert "Score" in [h.value for h in at.subheader]  # it can still be scored: P(control) needs no references

    at.text_input(key="server_platemap").set_value(str(tiny_plate / "platemap.csv"))
    at.button(key="use_server_path").click().run()
    assert not [w.value for w in at.warning if "disease" in w.value]
