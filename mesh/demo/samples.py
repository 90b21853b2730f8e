"""Sample assets for `mesh demo`, drawn with Pillow at run time (nothing large ships in the package)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

POSTER_SIZE = (640, 400)  # pixels


@dataclass(frozen=True)
class Sample:
    """One demo asset."""

    name: str  # file name
    title: str  # what the page shows
    tags: tuple[str, ...]  # canonical tags it is added with
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]  # gradient from, to


SAMPLES = (
    Sample("poster-main-stage.png", "Main stage 19:00", ("poster", "stage-a"), ((236, 72, 153), (79, 70, 229))),
    Sample("poster-workshop.png", "Zine workshop 15:00", ("poster", "workshop"), ((16, 185, 129), (14, 116, 144))),
    Sample("poster-merch.png", "Merch table: prints & tees", ("poster", "merch"), ((245, 158, 11), (220, 38, 38))),
    Sample("map-venue.png", "Venue map", ("map",), ((100, 116, 139), (30, 41, 59))),
)
SCHEDULE = """Pop-up schedule
15:00  Zine workshop (room 2)
17:30  Open mic
19:00  Main stage
"""


def _poster(sample: Sample, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    width, height = POSTER_SIZE
    image = Image.new("RGB", POSTER_SIZE)
    draw = ImageDraw.Draw(image)
    (r1, g1, b1), (r2, g2, b2) = sample.colors
    for y in range(height):
        t = y / (height - 1)
        draw.line([(0, y), (width, y)], fill=(round(r1 + (r2 - r1) * t), round(g1 + (g2 - g1) * t),
                                              round(b1 + (b2 - b1) * t)))
    try:
        font = ImageFont.load_default(size=36)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.rectangle([(30, height - 120), (width - 30, height - 40)], fill=(0, 0, 0))
    draw.text((50, height - 105), sample.title, fill=(255, 255, 255), font=font)
    image.save(path, format="PNG", optimize=True)


def _index(samples: tuple[Sample, ...]) -> str:
    figures = "\n".join(
        f'<figure><img src="{html.escape(s.name)}" alt="{html.escape(s.title)}" width="320">'
        f"<figcaption>{html.escape(s.title)}</figcaption></figure>" for s in samples
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>AssetMesh demo</title>"
        "<meta name=viewport content='width=device-width'></head><body>"
        "<h1>AssetMesh demo pop-up</h1><p>Served by this node from the current release; "
        "every byte was verified by hash.</p>"
        f'{figures}<p><a href="schedule.txt">Schedule</a></p></body></html>\n'
    )


def write_samples(directory: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Write the sample site into `directory`; (path, tags) of each asset to add."""
    directory.mkdir(parents=True, exist_ok=True)
    added = []
    for sample in SAMPLES:
        _poster(sample, directory / sample.name)
        added.append((directory / sample.name, sample.tags))
    (directory / "schedule.txt").write_text(SCHEDULE, encoding="utf-8")
    added.append((directory / "schedule.txt", ("schedule",)))
    (directory / "index.html").write_text(_index(SAMPLES), encoding="utf-8")
    return added
