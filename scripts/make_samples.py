"""Writes docs/samples/: a dozen small pictures (shapes in colours), so the README's offline
route (`--model tiny`, no hub) has a folder to index on a fresh machine.

    python scripts/make_samples.py      # rewrites docs/samples/*.jpg

Each file is named for what it shows (`red-circle-on-white.jpg`); the ingest uses the file name
as the image's id. Deterministic: the same bytes each run.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "docs" / "samples"
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (240, 210, 40)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (20, 20, 20), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, colour: tuple[int, int, int], background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (160, 120), background)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse([40, 20, 120, 100], fill=colour)
    elif shape == "square":
        pen.rectangle([40, 20, 120, 100], fill=colour)
    else:
        pen.polygon([(80, 15), (130, 105), (30, 105)], fill=colour)
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for index, (name, colour) in enumerate(COLOURS.items()):
        for offset, shape in enumerate(SHAPES):
            background_name = list(BACKGROUNDS)[(index + offset) % len(BACKGROUNDS)]
            picture = draw(shape, colour, BACKGROUNDS[background_name])
            picture.save(OUT / f"{name}-{shape}-on-{background_name}.jpg", quality=85)


if __name__ == "__main__":
    main()
