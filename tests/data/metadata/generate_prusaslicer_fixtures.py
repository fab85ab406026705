"""Regenerate the real-PrusaSlicer fixtures of this folder and the reference
outputs beside them (issue 10, item 12).

    apt-get install prusa-slicer        # Debian bookworm: PrusaSlicer 2.5.0
    .venv/bin/python tests/data/metadata/generate_prusaslicer_fixtures.py

Three files, each sliced by the real PrusaSlicer CLI from a 15x15x10 mm box
with PrusaSlicer's stock layer-change G-code (``;BEFORE_LAYER_CHANGE`` /
``;AFTER_LAYER_CHANGE``):

* ``prusaslicer_mini_thumbs_16_220.gcode``: a MINI-like printer whose
  ``thumbnails = 16x16,220x124`` (no 32x32);
* ``prusaslicer_mk4_thumbs_qoi.gcode``: an MK4-like printer with PrusaSlicer
  2.6+'s ``16x16/QOI, 313x173/QOI, 440x240/QOI, 480x240/QOI, 300x300/PNG``;
* ``prusaslicer_mmu_wipe_tower.gcode``: two extruders on one nozzle
  (perimeters T0, infill T1), wipe tower, no Z-hop: the tower's last
  toolchange is at Z 10.2 over a 10 mm object.

PrusaSlicer's CLI cannot render thumbnails (the GUI does, with OpenGL), so
the thumbnail blocks are added after slicing, in the GUI's exact layout
(``;`` lines around each block, base64 in lines of 78 characters), made from
the GUI's real 300x300 RGBA render in ``../shared/gcode``
(``prusaslicer_gui_cube20_0.2mm_thumbs_png.gcode``) fitted into each size on a
transparent background, as PrusaSlicer renders them.  Nothing else is edited.

``NAME.metadata.json`` is the stdout of the reference Moonraker 0.11.0's
extractor (``.reference-venv``, run as a black box with ``-p DIR -f NAME``),
pretty-printed; ``.thumbs/`` gets the thumbnails it wrote.
``prusaslicer_object_height.reference.json`` records the reference's
``object_height`` for small edits of the wipe-tower file (see ``PROBES``),
which ``tests/test_metadata.py`` replays against moonflask.
``cube_rgba.ufp`` (+ ``cube_rgba_ufp.reference.json``) is a UFP whose preview
is that RGBA render, for the small thumbnail Moonraker makes of it.
"""
import base64
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from PIL import Image

OUT = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(OUT)))
REF_PY = os.path.join(ROOT, ".reference-venv", "bin", "python")
REF_SCRIPT = glob.glob(os.path.join(
    ROOT, ".reference-venv", "lib", "python3*", "site-packages", "moonraker",
    "components", "file_manager", "metadata.py"))[0]
SHARED = os.environ.get("MOONFLASK_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")
RENDER_SRC = os.path.join(SHARED, "gcode", "prusaslicer_gui_cube20_0.2mm_thumbs_png.gcode")

# PrusaSlicer's stock layer-change G-code and a Prusa-style start
BASE_INI = r"""
nozzle_diameter = 0.4
layer_height = 0.2
first_layer_height = 0.2
filament_type = PLA
filament_settings_id = "Prusament PLA"
temperature = 215
first_layer_temperature = 215
bed_temperature = 60
first_layer_bed_temperature = 60
gcode_flavor = marlin2
gcode_label_objects = 1
use_relative_e_distances = 1
before_layer_gcode = ;BEFORE_LAYER_CHANGE\nG92 E0.0\n;[layer_z]\n\n
layer_gcode = ;AFTER_LAYER_CHANGE\n;[layer_z]
start_gcode = G90 ; use absolute coordinates\nM83 ; extruder relative mode\nM104 S[first_layer_temperature] ; set extruder temp\nM140 S[first_layer_bed_temperature] ; set bed temp\nM190 S[first_layer_bed_temperature] ; wait for bed temp\nM109 S[first_layer_temperature] ; wait for extruder temp\nG28 ; home all\nG1 Z0.4 F1000.0\nG1 X55.0 E8.0 F2000.0\nG92 E0.0\n
"""

PRINTERS = {
    "prusaslicer_mini_thumbs_16_220": {
        "ini": r"""
bed_shape = 0x0,180x0,180x180,0x180
max_print_height = 180
printer_model = MINI
printer_settings_id = Original Prusa MINI & MINI+
retract_lift = 0.2
thumbnails = 16x16,220x124
end_gcode = G1 E-1 F2100 ; retract\n{if max_layer_z < max_print_height}G1 Z{z_offset+min(max_layer_z+2, max_print_height)} F720 ; Move print head up{endif}\nG1 X178 Y178 F4200 ; park print head\n{if max_layer_z < max_print_height}G1 Z{z_offset+min(max_layer_z+30, max_print_height)} F720 ; Move print head further up{endif}\nG4 ; wait\nM104 S0 ; turn off temperature\nM140 S0 ; turn off heatbed\nM107 ; turn off fan\nM84 ; disable motors\n
""",
        "center": "90,90",
        "thumbs": [(16, 16, "PNG"), (220, 124, "PNG")],
    },
    "prusaslicer_mk4_thumbs_qoi": {
        "ini": r"""
bed_shape = 0x0,250x0,250x210,0x210
max_print_height = 220
printer_model = MK4
printer_settings_id = Original Prusa MK4 0.4 nozzle
retract_lift = 0.2
thumbnails = 16x16,313x173,440x240,480x240,300x300
end_gcode = {if max_layer_z < max_print_height}G1 Z{z_offset+min(max_layer_z+1, max_print_height)} F720 ; Move print head up{endif}\nM104 S0 ; turn off temperature\nM140 S0 ; turn off heatbed\nM107 ; turn off fan\nG1 X241 Y170 F3600 ; park\n{if max_layer_z < max_print_height}G1 Z{z_offset+min(max_layer_z+23, max_print_height)} F300 ; Move print head up{endif}\nM84 X Y E ; disable motors\n
""",
        "center": "125,105",
        "thumbs": [(16, 16, "QOI"), (313, 173, "QOI"), (440, 240, "QOI"), (480, 240, "QOI"),
                   (300, 300, "PNG")],
        # PrusaSlicer 2.6+ names the format per size
        "config_edit": ("; thumbnails = 16x16,313x173,440x240,480x240,300x300",
                        "; thumbnails = 16x16/QOI, 313x173/QOI, 440x240/QOI, 480x240/QOI, 300x300/PNG"),
    },
    "prusaslicer_mmu_wipe_tower": {
        "ini": r"""
bed_shape = 0x0,250x0,250x210,0x210
max_print_height = 210
printer_model = MK3SMMU2S
printer_settings_id = Original Prusa i3 MK3S MMU2S Single
nozzle_diameter = 0.4,0.4
extruder_colour = "#FF8000";"#0080FF"
filament_colour = #FF8000;#0080FF
filament_type = PLA;PETG
filament_settings_id = "Prusament PLA @MMU2";"Prusament PETG @MMU2"
temperature = 215,240
first_layer_temperature = 215,230
bed_temperature = 60,85
first_layer_bed_temperature = 60,85
single_extruder_multi_material = 1
wipe_tower = 1
wipe_tower_x = 170
wipe_tower_y = 125
wipe_tower_width = 60
perimeter_extruder = 1
infill_extruder = 2
solid_infill_extruder = 2
retract_lift = 0
retract_length = 0.8
retract_length_toolchange = 4
end_gcode = G1 E-0.8 F2100 ; retract filament\nG1 X0 Y200 F3600 ; park\nM104 S0 ; turn off temperature\nM140 S0 ; turn off heatbed\nM107 ; turn off fan\nM84 ; disable motors\n
""",
        "center": "100,100",
        "thumbs": [],
    },
}

# object_height probes on the wipe-tower file: its ";BEFORE_LAYER_CHANGE\n"
# markers are first renamed (STRIP), then INSERT is put before the last
# "; stop printing object" (FILLER lines of moves after it, when given: the
# generator picks their number so that the marker starts MARKER_DISTANCE
# bytes before the end of the file), or the first line is replaced by HEADER.
STRIP = (";BEFORE_LAYER_CHANGE\n", ";BEFORE_LAYER\n")
PROBES = {
    "no_marker": {"insert": ""},
    "g92_line": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n\n"},
    "no_line_between": {"insert": ";BEFORE_LAYER_CHANGE\n;9.5\n\n"},
    "two_lines_between": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\nM117 x\n;9.5\n\n"},
    "empty_line_between": {"insert": ";BEFORE_LAYER_CHANGE\n\n;9.5\n"},
    "next_line_is_number_too": {"insert": ";BEFORE_LAYER_CHANGE\n;9.5\n;3\n"},
    "integer": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9\n\n"},
    "trailing_dot": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.\n\n"},
    "leading_dot": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;.5\n\n"},
    "space_after_semicolon": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n; 9.5\n\n"},
    "max_not_last": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n\nG1 X1\n"
                               ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;3.5\n\n"},
    "zero": {"insert": ";BEFORE_LAYER_CHANGE\n;0\n"},
    "above_everything": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;250.5\n"},
    "text_after_number": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5 mm\n"},
    "exponent": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;1e1\n"},
    "not_a_number": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;abc\n"},
    "after_layer_change_only": {"insert": ";AFTER_LAYER_CHANGE\n;9.5\n"},
    "z_comment_only": {"insert": ";Z:9.5\n"},
    "crlf": {"insert": ";BEFORE_LAYER_CHANGE\r\nG92 E0.0\r\n;9.5\r\n"},
    "marker_suffix": {"insert": ";BEFORE_LAYER_CHANGE_X\nG92 E0.0\n;9.5\n"},
    "not_at_line_start": {"insert": " ;BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n"},
    # region: only the last MiB counts
    "marker_inside_last_mib": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n",
                               "marker_distance": 1024 * 1024 - 3000},
    "marker_before_last_mib": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n",
                               "marker_distance": 1024 * 1024 + 3000},
    # the same table for the other slicers of the family; not for unknown ones
    "slic3r": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n",
               "header": "; generated by Slic3r 1.3.0 on 2024-01-01 at 10:00:00"},
    "slic3r_pe": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n",
                  "header": "; generated by Slic3r Prusa Edition 1.41.3+linux64 on 2019-01-01 at 10:00:00"},
    "superslicer": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n",
                    "header": "; generated by SuperSlicer 2.5.59 on 2024-01-01 at 10:00:00 UTC"},
    "orcaslicer": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n",
                   "header": "; generated by OrcaSlicer 2.0.0 on 2024-01-01 at 10:00:00 UTC"},
    "unknown_slicer": {"insert": ";BEFORE_LAYER_CHANGE\nG92 E0.0\n;9.5\n",
                       "header": "; some custom generator"},
}
FILLER_LINE = "G1 X1 Y1 E0.01\n"
PROBE_BASE = "prusaslicer_mmu_wipe_tower.gcode"


def probe_text(base: str, probe: dict) -> str:
    """The wipe-tower file edited as ``probe`` says (also used by the tests)."""
    text = base.replace(*STRIP)
    at = text.rindex("; stop printing object")
    text = text[:at] + probe["insert"] + FILLER_LINE * probe.get("filler", 0) + text[at:]
    if "header" in probe:
        text = probe["header"] + text[text.index("\n"):]
    return text


def merge_ini(*texts: str) -> str:
    """``key = value`` lines, later texts overriding earlier ones
    (PrusaSlicer refuses a key given twice)."""
    cfg: dict = {}
    for text in texts:
        for line in text.strip().splitlines():
            key, _, value = line.partition(" = ")
            cfg[key.strip()] = value
    return "".join(f"{k} = {v}\n" for k, v in cfg.items())


def box_stl(path: str, sx: float = 15, sy: float = 15, sz: float = 10) -> None:
    v = [(x, y, z) for x in (0, sx) for y in (0, sy) for z in (0, sz)]
    faces = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    out = ["solid box15"]
    for a, b, c, d in faces:
        for tri in ((a, b, c), (a, c, d)):
            out.append(" facet normal 0 0 0\n  outer loop")
            out += ["   vertex %g %g %g" % v[i] for i in tri]
            out.append("  endloop\n endfacet")
    out.append("endsolid box15")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def real_render() -> Image.Image:
    text = open(RENDER_SRC).read()
    m = re.search(r"; thumbnail begin 300x300 \d+\n(.*?); thumbnail end", text, re.S)
    data = base64.b64decode("".join(line[2:] for line in m.group(1).splitlines()))
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGBA")


def thumb_block(render: Image.Image, w: int, h: int, fmt: str) -> str:
    fitted = render.copy()
    fitted.thumbnail((w, h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    canvas.paste(fitted, ((w - fitted.width) // 2, (h - fitted.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, fmt)
    data = base64.b64encode(buf.getvalue()).decode()
    tag = "thumbnail" if fmt == "PNG" else "thumbnail_" + fmt
    lines = [f"\n;\n; {tag} begin {w}x{h} {len(data)}\n"]
    lines += [f"; {data[i:i + 78]}\n" for i in range(0, len(data), 78)]
    lines.append(f"; {tag} end\n;\n")
    return "".join(lines)


def run_reference(folder: str, name: str, *extra: str) -> dict:
    p = subprocess.run([REF_PY, REF_SCRIPT, "-p", folder, "-f", name, *extra],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def rgba_ufp(render: Image.Image, tmp: str) -> None:
    """``cube_rgba.ufp``: a Cura G-code with an RGBA 300x300 preview (as Cura
    writes them), and what the reference makes of its upload
    (``cube_rgba_ufp.reference.json``: metadata, sha256 of each thumbnail)."""
    import hashlib
    import zipfile
    ufp = os.path.join(OUT, "cube_rgba.ufp")
    buf = io.BytesIO()
    render.save(buf, "PNG")
    with zipfile.ZipFile(ufp, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("/[Content_Types].xml", '<?xml version="1.0" encoding="UTF-8"?><Types/>')
        z.writestr("/_rels/.rels", "<Relationships/>")
        z.writestr("/3D/model.gcode",
                   open(os.path.join(SHARED, "gcode", "cura_cube20_0.2mm_ender3.gcode")).read())
        z.writestr("/Metadata/thumbnail.png", buf.getvalue())
    work = os.path.join(tmp, "work_ufp")
    os.makedirs(work)
    shutil.copy(ufp, work)
    out = run_reference(work, "cube_rgba.gcode", "-u", os.path.join(work, "cube_rgba.ufp"))
    td = os.path.join(work, ".thumbs")
    out["thumbs"] = {t: hashlib.sha256(open(os.path.join(td, t), "rb").read()).hexdigest()
                     for t in sorted(os.listdir(td))}
    with open(os.path.join(OUT, "cube_rgba_ufp.reference.json"), "w") as f:
        json.dump(out, f, indent=2)
    print("cube_rgba.ufp", [(t["width"], t["height"]) for t in out["metadata"]["thumbnails"]])


def main() -> None:
    render = real_render()
    with tempfile.TemporaryDirectory() as tmp:
        stl = os.path.join(tmp, "box15.stl")
        box_stl(stl)
        for name, spec in PRINTERS.items():
            ini = os.path.join(tmp, name + ".ini")
            with open(ini, "w") as f:
                f.write(merge_ini(BASE_INI, spec["ini"]))
            gcode = os.path.join(OUT, name + ".gcode")
            subprocess.run(["prusa-slicer", "--load", ini, "--center", spec["center"],
                            "--export-gcode", "-o", gcode, stl],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            text = open(gcode).read()
            if spec["thumbs"]:
                head_end = text.index("\n\n") + 2          # after the "generated by" line
                blocks = "".join(thumb_block(render, w, h, fmt) for w, h, fmt in spec["thumbs"])
                text = text[:head_end] + blocks + text[head_end:]
            if "config_edit" in spec:
                text = text.replace(*spec["config_edit"])
            with open(gcode, "w") as f:
                f.write(text)
            work = os.path.join(tmp, "work_" + name)
            os.makedirs(work)
            shutil.copy(gcode, work)
            out = run_reference(work, name + ".gcode")
            with open(os.path.join(OUT, name + ".metadata.json"), "w") as f:
                json.dump(out, f, indent=2)
            td = os.path.join(work, ".thumbs")
            if os.path.isdir(td):
                os.makedirs(os.path.join(OUT, ".thumbs"), exist_ok=True)
                for t in sorted(os.listdir(td)):
                    shutil.copy(os.path.join(td, t), os.path.join(OUT, ".thumbs", t))
            m = out["metadata"]
            print(name, m.get("object_height"),
                  [(t["width"], t["height"]) for t in m.get("thumbnails", [])])
        rgba_ufp(render, tmp)
        base = open(os.path.join(OUT, PROBE_BASE)).read()
        results = {}
        stripped = base.replace(*STRIP)
        rest = len(stripped) - stripped.rindex("; stop printing object")
        for pname, probe in PROBES.items():
            if "marker_distance" in probe:
                probe = dict(probe)
                dist = probe.pop("marker_distance")
                probe["filler"] = (dist - rest - len(probe["insert"])) // len(FILLER_LINE)
            work = os.path.join(tmp, "probe")
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            with open(os.path.join(work, "p.gcode"), "w", newline="") as f:
                f.write(probe_text(base, probe))
            meta = run_reference(work, "p.gcode")["metadata"]
            results[pname] = dict(probe, object_height=meta.get("object_height"),
                                  slicer=meta["slicer"])
            print(" probe", pname, results[pname]["object_height"])
        doc = {"base": PROBE_BASE, "strip": list(STRIP), "filler_line": FILLER_LINE,
               "probes": results}
        with open(os.path.join(OUT, "prusaslicer_object_height.reference.json"), "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
