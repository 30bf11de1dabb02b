"""Draw the integration's brand icon: a house and a phone joined by a model's travelling path.

Run with the companion environment (it has Pillow):  python scripts/draw_icon.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

BRAND = Path(__file__).resolve().parent.parent / "custom_components" / "mlmule" / "brand"
TEAL = (0, 150, 136, 255)
AMBER = (255, 179, 0, 255)
WHITE = (255, 255, 255, 255)


def draw(size: int) -> Image.Image:
    """Draw the icon on a transparent square of the given size."""
    s = size / 256
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((8 * s, 8 * s, 248 * s, 248 * s), radius=48 * s, fill=TEAL)
    # house
    d.polygon([(40 * s, 120 * s), (100 * s, 62 * s), (160 * s, 120 * s)], fill=WHITE)
    d.rectangle((56 * s, 118 * s, 144 * s, 196 * s), fill=WHITE)
    d.rectangle((88 * s, 150 * s, 112 * s, 196 * s), fill=TEAL)
    # phone
    d.rounded_rectangle((170 * s, 118 * s, 220 * s, 206 * s), radius=10 * s, fill=WHITE)
    d.rectangle((178 * s, 130 * s, 212 * s, 186 * s), fill=TEAL)
    # the snapshot travelling between them
    d.arc((112 * s, 40 * s, 212 * s, 140 * s), start=200, end=330, fill=AMBER, width=round(9 * s))
    for cx, cy in ((125 * s, 66 * s), (196 * s, 110 * s)):
        r = 11 * s
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=AMBER)
    return img


def main() -> None:
    BRAND.mkdir(parents=True, exist_ok=True)
    draw(256).save(BRAND / "icon.png", optimize=True)
    draw(512).save(BRAND / "icon@2x.png", optimize=True)


if __name__ == "__main__":
    main()
