"""The built-in styles: public-domain paintings shipped with the web tier (credits in
static/presets/SOURCES.md)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files


@dataclass(frozen=True)
class Preset:
    title: str
    artist: str
    year: str
    file: str  # under web/static/presets


PRESETS = {
    "starry_night": Preset("The Starry Night", "Vincent van Gogh", "1889", "starry_night.jpg"),
    "the_scream": Preset("The Scream", "Edvard Munch", "1893", "the_scream.jpg"),
    "shipwreck": Preset("The Shipwreck of the Minotaur", "J. M. W. Turner", "c. 1810", "shipwreck.jpg"),
    "woman_with_hat": Preset("Woman with a Hat", "Henri Matisse", "1905", "woman_with_hat.jpg"),
}


def preset_bytes(name: str) -> bytes:
    return files("web").joinpath("static", "presets", PRESETS[name].file).read_bytes()
