"""The contact sheet of a sweep: the cells' pictures on a grid, labelled with the axes' values.

Drawn with Pillow and the font Pillow ships (Aileron, through FreeType), so the sheet looks
the same on every machine. The photo and the styles sit as thumbnails in the top-left corner,
where the row and column labels meet. A cell without a picture yet is drawn blank, with its
status written in it.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .sweeps import Axis, shape

BACKGROUND = (250, 250, 248)
INK = (30, 30, 30)
FAINT = (150, 150, 150)
BLANK = (232, 232, 228)
GAP = 8  # pixels between cells
PAD = 12  # around the whole sheet


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def contact_sheet(
    axes: Sequence[Axis],
    pictures: Sequence[Image.Image | None],
    *,
    content: Image.Image,
    styles: Sequence[Image.Image],
    notes: Sequence[str] = (),
    cell: int = 256,
) -> Image.Image:
    """The sheet for `axes`, `pictures` in cell order (None: not painted yet, drawn blank with
    `notes[i]` in it, e.g. its status). `cell` is the long side of each cell in pixels."""
    rows, columns = shape(axes)
    if len(pictures) != rows * columns:
        raise ValueError(f"{len(pictures)} pictures for a {rows}x{columns} grid")
    width, height = _cell_size(content.size, cell)
    label = _font(max(12, cell // 16))
    header = _font(max(13, cell // 14))
    row_axis, column_axis = (axes[0], axes[1]) if len(axes) == 2 else (None, axes[0])

    line = _text_height(label) + 6
    top = PAD + 2 * line  # the column axis's name, then its values
    left_labels = [_fit(v, label, cell) for v in row_axis.values] if row_axis else []
    left = PAD + (
        max([_text_width(t, label) for t in left_labels] + [_text_width(row_axis.name, header)]) + GAP
        if row_axis
        else 0
    )
    corner = _corner(content, styles, top - PAD)
    left = max(left, PAD + corner.width + GAP)
    top = max(top, PAD + corner.height + GAP + line)  # a line under the corner for the row axis name

    sheet = Image.new(
        "RGB", (left + columns * (width + GAP) - GAP + PAD, top + rows * (height + GAP) - GAP + PAD), BACKGROUND
    )
    draw = ImageDraw.Draw(sheet)
    sheet.paste(corner, (PAD, PAD))
    draw.text((left, top - 2 * line), column_axis.name, font=header, fill=INK)
    for c, value in enumerate(column_axis.values):
        draw.text((left + c * (width + GAP), top - line), _fit(value, label, width), font=label, fill=INK)
    if row_axis:
        draw.text((PAD, top - line), row_axis.name, font=header, fill=INK)
        for r, text in enumerate(left_labels):
            draw.text((PAD, top + r * (height + GAP) + height // 2 - line // 2), text, font=label, fill=INK)
    for index, picture in enumerate(pictures):
        r, c = divmod(index, columns)
        x, y = left + c * (width + GAP), top + r * (height + GAP)
        if picture is None:
            draw.rectangle((x, y, x + width - 1, y + height - 1), fill=BLANK)
            note = notes[index] if index < len(notes) else ""
            draw.text((x + 8, y + 8), note, font=label, fill=FAINT)
        else:
            sheet.paste(ImageOps.pad(picture.convert("RGB"), (width, height), color=BACKGROUND), (x, y))
    return sheet


def _cell_size(content_size: tuple[int, int], cell: int) -> tuple[int, int]:
    w, h = content_size
    scale = cell / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _corner(content: Image.Image, styles: Sequence[Image.Image], height: int) -> Image.Image:
    """The photo and the styles side by side, `height` high but at least 48 px and at most 96 px."""
    images = [content, *styles]
    tall = max(48, min(height, 96))
    thumbs = [ImageOps.contain(image.convert("RGB"), (tall * 3, tall)) for image in images]
    strip = Image.new("RGB", (sum(t.width for t in thumbs) + 4 * (len(thumbs) - 1), tall), BACKGROUND)
    x = 0
    for thumb in thumbs:
        strip.paste(thumb, (x, 0))
        x += thumb.width + 4
    return strip


def _text_width(text: str, font) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def _text_height(font) -> int:
    box = font.getbbox("Ag")
    return int(box[3])


def _fit(text: str, font, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits `width` pixels."""
    if _text_width(text, font) <= width:
        return text
    while text and _text_width(text + "…", font) > width:
        text = text[:-1]
    return text + "…"
