"""Issue 14: ``[button NAME]``.

This container has no GPIO chip and no gpio-sim (no configfs, no kernel
modules), so a button's line, its edge events and the rendering of its
on_press/on_release templates cannot be exercised here; what is tested is
that each configuration problem is reported and the server keeps serving.
"""
from __future__ import annotations

import os

import pytest


@pytest.mark.parametrize("text,words", [
    ("[button b]\npin: gpiochip9/gpio3\non_press:\n"
     "  {% do call_method('printer.emergency_stop') %}\n",
     "no gpio chip /dev/gpiochip9"),
    ("[button b]\npin: ^!gpio3\n", "at least one of 'on_press' or 'on_release'"),
    ("[button b]\npin: gpio3x\non_press: x\n", "invalid gpio pin"),
    ("[button b]\ntype: i2c\npin: gpio3\non_press: x\n", "unsupported button type"),
    ("[button b]\npin: gpio3\ndebounce_period: 0.001\non_press: x\n", "below the minimum"),
    ("[button b]\npin: gpio3\non_release:\n  {% if %}\n", "Error compiling template"),
])
def test_bad_config(start_server, tmp_root, text, words):
    data = os.path.join(tmp_root, "badbutton")
    os.makedirs(os.path.join(data, "gcodes"), exist_ok=True)
    srv = start_server(config=text, data_path=data)
    info = srv.result("GET", "/server/info")
    assert "button" in info["failed_components"]
    assert any(words in w for w in info["warnings"]), info["warnings"]
    srv.stop()
