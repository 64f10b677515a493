"""Upload & score: bring a plate (zip, image files, or a path on the server) and its plate map,
confirm the detected layout and channel roles, then score it into the result store."""

from __future__ import annotations

import json

import streamlit as st

from dashboard import auth, components, flows, resources
from neurorg_core.devices import BACKENDS
from neurorg_core.errors import NeuroRGError, PlateMapError
from neurorg_core.platemap import check_plate_map, load_plate_map, map_plates, plate_rows, select_plate
from neurorg_core.pipeline import ScoreOptions
from neurorg_core.schema import CHANNELS, READOUT_LABELS, READOUTS
from neurorg_core.stats import QC_ROLES, check_roles

st.title("Upload & score")
components.set_link("upload", None)
limit_mb = int(st.get_option("server.maxUploadSize"))
st.caption(
    f"Upload limit: **{limit_mb} MB per file** (`server.maxUploadSize` in `.streamlit/config.toml`). "
    "A larger plate: raise that limit and restart the app, or copy the plate to the server and give "
    "its path below, or score it with `python -m neurorg_core score PATH --plate-map CSV` (the "
    "result appears here)."
)


def _forget_removed_upload(uploader: str) -> None:
    """Files the user removed from an uploader are no longer used. (The uploaders also come back
    empty after a visit to another page, without calling this: the files taken stay in use.)"""
    if st.session_state.get("images_from") != "upload" or st.session_state.get(uploader):
        return
    if uploader == "upload_images":
        st.session_state.pop("images_path", None)
    else:
        st.session_state["platemap_path"] = ""
        st.session_state["platemap_upload"] = None


upload_tab, server_tab = st.tabs(["Upload files", "Path on the server"])
with upload_tab:
    image_files = st.file_uploader(
        "Plate images: one .zip, or the image files (.tif, .tiff, .png)", accept_multiple_files=True,
        type=["zip", "tif", "tiff", "png", "npy", "csv"], key="upload_images", on_change=_forget_removed_upload,
        args=("upload_images",),
    )
    map_file = st.file_uploader("Plate map (CSV, TSV or Excel .xlsx)", type=["csv", "tsv", "txt", "xlsx"],
                                key="upload_platemap", on_change=_forget_removed_upload,
                                args=("upload_platemap",))
    if st.button("Use these files", key="use_uploads", disabled=not image_files):
        try:
            folder = flows.save_uploads(
                [(f.name, f.getvalue()) for f in image_files],
                (map_file.name, map_file.getvalue()) if map_file is not None else None,
            )
            st.session_state["images_path"] = str(flows.images_path(folder))
            components.forget(*(f"role_{r}" for r in CHANNELS), "map_plate", "plate_name")
            st.session_state["platemap_path"] = (
                str(flows.plate_map_path(folder)) if map_file is not None else ""
            )
            st.session_state["platemap_upload"] = map_file.file_id if map_file is not None else None
            st.session_state["images_from"] = "upload"
        except NeuroRGError as exc:
            st.error(components.plain(exc))
    # The plate map follows its uploader once the images are taken: a map added or replaced
    # afterwards (or still arriving when the button was pressed) is used without pressing again.
    if (map_file is not None and st.session_state.get("images_from") == "upload"
            and st.session_state.get("platemap_upload") != map_file.file_id):
        try:
            st.session_state["platemap_path"] = str(
                flows.save_plate_map((map_file.name, map_file.getvalue())))
            st.session_state["platemap_upload"] = map_file.file_id
            components.forget("map_plate")
        except NeuroRGError as exc:
            st.error(components.plain(exc))
with server_tab:
    roots = resources.config().server_roots
    st.caption("Paths under " + ", ".join(f"`{r}`" for r in roots) + " only (`NEURORG_SERVER_ROOTS`); "
               "a relative path starts at the first.")
    server_images = st.text_input("Plate folder or .zip on the server", key="server_images")
    server_map = st.text_input("Plate map file on the server", key="server_platemap")
    if st.button("Use this path", key="use_server_path"):
        try:
            st.session_state["images_path"] = str(
                flows.open_images(auth.allowed_server_path(server_images, roots)))
            components.forget(*(f"role_{r}" for r in CHANNELS), "map_plate", "plate_name")
            st.session_state["platemap_path"] = (
                str(auth.allowed_server_path(server_map, roots)) if server_map.strip() else ""
            )
            st.session_state["images_from"] = "server"
        except NeuroRGError as exc:
            st.error(components.plain(exc))

images_path = st.session_state.get("images_path")
if not images_path:
    st.info("Give the plate's images (and its plate map) above to continue.")
    st.stop()

# --- detected layout and channel roles -----------------------------------------------------
try:
    detected = resources.plate(images_path)
except NeuroRGError as exc:
    st.error(f"The images cannot be read: {components.plain(exc)}")
    st.stop()
st.subheader("Detected plate")
summary = detected.summary()
st.dataframe(components.plate_summary_table(summary), hide_index=True, key="plate_summary")

st.markdown("**Channel roles**: which channel of the files shows what (check before scoring).")
role_cols = st.columns(len(CHANNELS))
ids = list(detected.channel_ids)
channel_map = {
    role: col.selectbox(role.capitalize(), ids, index=ids.index(detected.channel_map[role]),
                        key=f"role_{role}")
    for role, col in zip(CHANNELS, role_cols)
}
if len(set(channel_map.values())) < len(CHANNELS):
    st.error("Each role needs its own channel: two roles point at the same channel id.")
    st.stop()
try:
    plate = resources.plate(detected.source, channel_map)
except NeuroRGError as exc:
    st.error(f"That channel mapping cannot be read: {components.plain(exc)}")
    st.stop()

file_problems = resources.file_problems(str(plate.source), json.dumps(channel_map, sort_keys=True))
if file_problems:
    st.error(f"{len(file_problems)} image file problem(s); fix them before scoring:\n"
             + "\n".join(f"- {components.plain(p)}" for p in file_problems[:50]))
    st.stop()

# --- plate map ------------------------------------------------------------------------------
st.subheader("Plate map")
platemap_path = st.session_state.get("platemap_path")
if not platemap_path:
    st.info("Add a plate map (Metadata_Well, compound, dose in uM, role) to score the plate.")
    st.stop()
try:
    plate_map = load_plate_map(platemap_path)
except PlateMapError as exc:
    st.error("The plate map has problems:\n" + "\n".join(f"- {components.plain(p)}" for p in exc.problems))
    st.stop()
except NeuroRGError as exc:
    st.error(components.plain(exc))
    st.stop()
plates_in_map = map_plates(plate_map)
map_plate = None
if len(plates_in_map) > 1:
    # the images' own plate to begin with (folder name, case and spaces ignored), as the CLI picks it
    own = select_plate(plate_map, plate.name)
    map_plate = st.selectbox("The map describes several plates: which one is this?", plates_in_map,
                             index=plates_in_map.index(own) if own is not None else 0, key="map_plate")
    plate_map = plate_rows(plate_map, map_plate)
problems = check_plate_map(plate_map, plate.wells(), plate=map_plate)
if problems:
    st.warning("Plate map vs images:\n" + "\n".join(f"- {components.plain(p)}" for p in problems))
else:
    st.success(f"Plate map matches the images: {len(plate_map)} wells.")
try:
    check_roles(plate_map, QC_ROLES)
except NeuroRGError as exc:
    st.warning("The plate can be scored (P(control) per well), but plate QC, rescue % and hits need "
               f"control and disease wells: {components.plain(exc)}.")
st.dataframe(plate_map, hide_index=True, height=200, key="platemap_table")

# --- score ----------------------------------------------------------------------------------
st.subheader("Score")
name = st.text_input("Plate name", value=flows.suggested_name(plate), key="plate_name")
stored = name.strip() in components.stored_plates()
if stored:
    st.info(f"Plate **{components.plain(name)}** is already in the result store. Open it as it is, or score again: "
            "fields already scored with this model come from the cache and cost nothing.")
    if st.button("Open stored results", key="open_stored"):
        st.switch_page("views/plate.py", query_params={"page": "plate", "plate": name.strip()})
with st.expander("Models: the installed bundles' cards, or add one by its path on the server"):
    new_model = st.text_input("Model bundle folder on the server (the folder holding card.json)",
                              key="add_bundle_path")
    if st.button("Add this model", key="add_bundle"):
        try:
            st.success(f"Added the model in {components.plain(components.add_bundle(new_model))}.")
        except NeuroRGError as exc:
            st.error(f"That model cannot be used: {components.plain(exc)}")
    bundles = resources.installed_bundles(components.added_bundles())
    st.dataframe(components.bundle_table(bundles), hide_index=True, key="bundle_table")
if not components.scoring_models(bundles):
    st.info(f"No model bundle is installed; put one under {', '.join(map(str, resources.model_roots()))} "
            "or add one by its path above.")
    st.stop()
model_path = components.model_select(bundles, resources.default_model_path())
with_channels = st.checkbox(
    "Also score the single-channel models (for the Channels page)", key="with_channels",
    value=False, disabled=not resources.single_channel_fits(model_path),
)
found_px = (f"{plate.pixel_size_um:g} um from the files ({plate.pixel_size_source})"
            if plate.pixel_size_um else "not in the files")
px_col, bits_col, readout_col = st.columns(3)
pixel_size = px_col.number_input(
    "Pixel size (um), if the files do not say", min_value=0.0, value=0.0, step=0.05, format="%.4f",
    key="pixel_size", help=f"Pixel size: {found_px}. Crops are cut at the model's physical crop size, so "
    "a plate imaged at another magnification is resampled to the model's scale. 0 = use the files' value.")
bits = bits_col.selectbox("Significant bits", ["detect", 8, 12, 14, 16], key="bit_depth",
                          help="12 for a 12-bit camera, etc. 'detect' reads it from the plate's maximum.")
readout = readout_col.selectbox("Readout", READOUTS, format_func=READOUT_LABELS.get, key="readout",
                                index=READOUTS.index(resources.config().readout),
                                help="The well score rescue %, hits, Z'/SSMD and EC50 use. The inflammation "
                                "score follows the phenotype; P(control) saturates past mild stimulation.")
auto_engine, device = resources.auto_backend()
backend_names = {"auto": f"auto (here: {'Keras' if auto_engine == 'keras' else 'LiteRT'})",
                 "litert": "LiteRT (CPU fast path)", "keras": "Keras (the Keras backend's device)"}
backend = st.selectbox("Inference", BACKENDS, format_func=backend_names.get, key="backend",
                       index=BACKENDS.index(resources.config().backend),
                       help=f"Runs on {device}. auto = Keras on a GPU when the Keras backend sees one, LiteRT "
                       "on the CPU otherwise; the default is NEURORG_BACKEND. Both give the same "
                       "probabilities (within 1e-4), so cached fields are shared.")
options = ScoreOptions(pixel_size_um=pixel_size or None, bits=None if bits == "detect" else int(bits),
                       readout=readout, backend=backend)
if resources.has_bundle(resources.ENSEMBLE_DIR):
    try:
        line, notes = resources.crop_preview(plate, options.pixel_size_um, options.bits)
    except NeuroRGError as exc:
        st.error(f"This plate cannot be cut for the model: {components.plain(exc)}")
        st.stop()
    st.caption(line)
    for note in notes:
        st.warning(note[0].upper() + note[1:] + ".")
if st.button("Score again" if stored else "Score plate", key="score", type="primary"):
    try:
        flows.score(plate, plate_map, name, components.progress_callback("Scoring"),
                    with_channels=with_channels, options=options, model_path=model_path)
    except NeuroRGError as exc:
        st.error(f"Scoring stopped: {components.plain(exc)}")
        st.stop()
    st.session_state[components.PLATE_KEY] = name.strip()
    st.switch_page("views/plate.py", query_params={"page": "plate", "plate": name.strip()})
