"""Messages of Upload & score show what the user typed literally."""

from __future__ import annotations

from pathlib import Path

from dashboard_fixtures import open_page, open_server_plate, shown

CRAFTED = "no_such **model** [x](evil.example)"


def test_a_model_path_that_cannot_be_used_is_quoted_as_plain_text(app_env: Path, tiny_plate: Path) -> None:
    """Every other message escapes what users supply (``components.plain``); this one put the
    typed path into Markdown as it was: bold text and a link in an error box."""
    at = open_server_plate(tiny_plate, tiny_plate / "platemap.csv")
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
    at = open_server_plate(tiny_plate, no_disease)
    warned = [w.value for w in at.warning if "disease" in w.value]
    assert warned and "rescue %" in warned[0] and "disease 0" in shown(warned[0]), [w.value for w in at.warning]
    assert "Score" in [h.value for h in at.subheader]  # it can still be scored: P(control) needs no references

    at.text_input(key="server_platemap").set_value(str(tiny_plate / "platemap.csv"))
    at.button(key="use_server_path").click().run()
    assert not [w.value for w in at.warning if "disease" in w.value]


def test_removing_the_uploaded_map_or_images_stops_using_them(app_env: Path, tiny_plate: Path) -> None:
    """The map uploader showed no file after the user removed the map, while the page went on
    checking (and would score) the plate against the removed map; the same for the images."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(tiny_plate.glob("*.tif")):
            zf.write(path, f"plate_01/{path.name}")
    at = open_page("upload")
    at.file_uploader(key="upload_images").set_value(("plate_01.zip", buf.getvalue(), "application/zip"))
    at.file_uploader(key="upload_platemap").set_value(
        ("platemap.csv", (tiny_plate / "platemap.csv").read_bytes(), "text/csv"))
    at.run()
    at.button(key="use_uploads").click().run()
    assert any("matches the images" in s.value for s in at.success)

    at.file_uploader(key="upload_platemap").set_value(None).run()
    assert not at.exception
    assert not any("matches the images" in s.value for s in at.success)
    assert any("Add a plate map" in i.value for i in at.info), [i.value for i in at.info]

    # After a visit to another page the uploaders come back empty; the images taken stay in use,
    # also when a map is then added.
    at.switch_page("views/overview.py").run()
    at.switch_page("views/upload.py").run()
    assert "Detected plate" in [h.value for h in at.subheader]
    at.file_uploader(key="upload_platemap").set_value(
        ("platemap.csv", (tiny_plate / "platemap.csv").read_bytes(), "text/csv")).run()
    assert "Detected plate" in [h.value for h in at.subheader]
    assert any("matches the images" in s.value for s in at.success)

    at.file_uploader(key="upload_images").set_value(("plate_01.zip", buf.getvalue(), "application/zip")).run()
    at.file_uploader(key="upload_images").set_value([]).run()
    assert not at.exception
    assert "Detected plate" not in [h.value for h in at.subheader]
    assert any("Give the plate's images" in i.value for i in at.info)
