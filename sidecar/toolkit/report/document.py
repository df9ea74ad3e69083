"""A small document model and its three renderers: Markdown, self-contained HTML, PDF (fpdf2).

The report is composed once as a list of blocks; each renderer walks the same list, so the three
formats always say the same thing. Text is plain (no inline markup); every renderer escapes it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union


@dataclass(frozen=True)
class Heading:
    level: int  # 1..3
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""
    widths: Sequence[float] | None = None  # relative column widths (PDF)


@dataclass(frozen=True)
class KeyValues:
    pairs: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Callout:
    text: str
    kind: str = "info"  # info | ok | warning | error


@dataclass(frozen=True)
class SignatureBlock:
    fields: Sequence[tuple[str, str]]  # label, pre-filled value ("" = line to sign/fill by hand)


@dataclass(frozen=True)
class PageBreak:
    pass


Block = Union[Heading, Paragraph, Bullets, Table, KeyValues, Figure, Callout, SignatureBlock, PageBreak]


@dataclass
class Document:
    title: str
    subtitle: str = ""
    footer: str = ""
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> "Document":
        self.blocks.extend(blocks)
        return self


# -- Markdown ---------------------------------------------------------------------------------------


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_").replace("\n", " ")


def to_markdown(doc: Document, out_dir: Path) -> str:
    lines = [f"# {_md(doc.title)}", ""]
    if doc.subtitle:
        lines += [f"*{_md(doc.subtitle)}*", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            lines += [f"{'#' * (b.level + 1)} {_md(b.text)}", ""]
        elif isinstance(b, Paragraph):
            lines += [_md(b.text), ""]
        elif isinstance(b, Bullets):
            lines += [f"- {_md(i)}" for i in b.items] + [""]
        elif isinstance(b, (Table, KeyValues)):
            headers, rows = (("Item", "Value"), b.pairs) if isinstance(b, KeyValues) else (b.headers, b.rows)
            lines.append("| " + " | ".join(_md(h) for h in headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            lines += ["| " + " | ".join(_md(str(c)) for c in row) + " |" for row in rows]
            if isinstance(b, Table) and b.caption:
                lines += ["", f"*{_md(b.caption)}*"]
            lines.append("")
        elif isinstance(b, Figure):
            rel = _relative(b.path, out_dir)
            lines += [f"![{_md(b.caption)}]({rel})", "", f"*{_md(b.caption)}*", ""]
        elif isinstance(b, Callout):
            label = {"ok": "VERIFIED", "warning": "WARNING", "error": "FAILED"}.get(b.kind, "NOTE")
            lines += [f"> **{label}:** {_md(b.text)}", ""]
        elif isinstance(b, SignatureBlock):
            lines += ["| Field | Entry |", "|---|---|"]
            lines += [f"| {_md(k)} | {_md(v) if v else '&nbsp;' * 40} |" for k, v in b.fields]
            lines.append("")
        elif isinstance(b, PageBreak):
            lines += ["---", ""]
    if doc.footer:
        lines += ["---", "", f"*{_md(doc.footer)}*", ""]
    return "\n".join(lines)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


# -- HTML -------------------------------------------------------------------------------------------


def to_html(doc: Document, css: str) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(doc.title)}</title>",
        f"<style>{css}</style></head><body><main>",
        f"<h1>{e(doc.title)}</h1>",
    ]
    if doc.subtitle:
        parts.append(f'<p class="subtitle">{e(doc.subtitle)}</p>')
    for b in doc.blocks:
        if isinstance(b, Heading):
            n = min(6, b.level + 1)
            parts.append(f"<h{n}>{e(b.text)}</h{n}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, (Table, KeyValues)):
            if isinstance(b, KeyValues):
                parts.append(
                    '<table class="kv">'
                    + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in b.pairs)
                    + "</table>"
                )
            else:
                head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
                body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b.rows)
                cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
                parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(b.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Callout):
            parts.append(f'<div class="callout {e(b.kind)}">{e(b.text)}</div>')
        elif isinstance(b, SignatureBlock):
            rows = "".join(
                f'<tr><th>{e(k)}</th><td class="{"filled" if v else "blank"}">{e(v)}</td></tr>' for k, v in b.fields
            )
            parts.append(f'<table class="signature">{rows}</table>')
        elif isinstance(b, PageBreak):
            parts.append('<div class="pagebreak"></div>')
    if doc.footer:
        parts.append(f'<footer>{e(doc.footer)}</footer>')
    parts.append("</main></body></html>")
    return "\n".join(parts)


# -- PDF --------------------------------------------------------------------------------------------


def _font_files() -> dict[str, Path]:
    """DejaVu Sans from matplotlib's data directory (Unicode: σ, ≥, — render)."""
    import matplotlib

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return {"": ttf / "DejaVuSans.ttf", "B": ttf / "DejaVuSans-Bold.ttf", "I": ttf / "DejaVuSans-Oblique.ttf"}


def to_pdf(doc: Document, path: Path) -> Path:
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos
    from fpdf.fonts import FontFace

    title, footer_text = doc.title, doc.footer

    class _PDF(FPDF):
        def header(self) -> None:
            if self.page_no() == 1:
                return
            self.set_font("DejaVu", "I", 7.5)
            self.set_text_color(110, 110, 110)
            self.cell(0, 5, title, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
            self.ln(2)
            self.set_text_color(0, 0, 0)

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("DejaVu", "I", 7.5)
            self.set_text_color(110, 110, 110)
            self.cell(0, 5, f"{footer_text}   ·   page {self.page_no()}/{{nb}}", align="C")
            self.set_text_color(0, 0, 0)

    pdf = _PDF(orientation="P", unit="mm", format="A4")
    pdf.set_title(doc.title)
    pdf.set_creator("certus-sidecar report")
    pdf.alias_nb_pages()
    for style, f in _font_files().items():
        pdf.add_font("DejaVu", style, str(f))
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.set_margins(18, 16, 18)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def text(t: str, size: float = 9.5, style: str = "", h: float = 4.8) -> None:
        pdf.set_font("DejaVu", style, size)
        pdf.multi_cell(width, h, t, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")

    pdf.set_font("DejaVu", "B", 17)
    pdf.multi_cell(width, 8, doc.title, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    if doc.subtitle:
        pdf.set_text_color(80, 80, 80)
        text(doc.subtitle, 10.5, "I", 5.5)
        pdf.set_text_color(0, 0, 0)
    pdf.ln(3)
    heading_fill = FontFace(emphasis="BOLD", fill_color=(230, 236, 245))
    for b in doc.blocks:
        if isinstance(b, Heading):
            size = {1: 13.5, 2: 11.5, 3: 10.2}.get(b.level, 10)
            if pdf.get_y() > pdf.h - (60 if b.level == 1 else 45):  # keep a heading with what follows
                pdf.add_page()
            pdf.ln(3 if b.level == 1 else 1.5)
            pdf.set_text_color(20, 60, 120)
            text(b.text, size, "B", size * 0.5)
            pdf.set_text_color(0, 0, 0)
            pdf.ln(1)
        elif isinstance(b, Paragraph):
            text(b.text)
            pdf.ln(1.5)
        elif isinstance(b, Bullets):
            for item in b.items:
                pdf.set_font("DejaVu", "", 9.5)
                pdf.set_x(pdf.l_margin + 3)
                pdf.multi_cell(width - 3, 4.8, "•  " + item, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
            pdf.ln(1.5)
        elif isinstance(b, (Table, KeyValues)):
            if isinstance(b, KeyValues):
                headers: Sequence[str] = ("Item", "Value")
                rows: Sequence[Sequence[str]] = [(k, v) for k, v in b.pairs]
                widths: Sequence[float] | None = (0.32, 0.68)
                caption = ""
            else:
                headers, rows, widths, caption = b.headers, b.rows, b.widths, b.caption
            pdf.set_font("DejaVu", "", 8)
            col_widths = tuple(w * width for w in widths) if widths else None
            with pdf.table(
                width=width,
                col_widths=col_widths,
                text_align="LEFT",
                headings_style=heading_fill,
                line_height=4.2,
                padding=0.8,
            ) as table:
                r = table.row()
                for h in headers:
                    r.cell(str(h))
                for row in rows:
                    r = table.row()
                    for c in row:
                        r.cell(str(c))
            if caption:
                pdf.set_text_color(90, 90, 90)
                text(caption, 8, "I", 4.2)
                pdf.set_text_color(0, 0, 0)
            pdf.ln(2)
        elif isinstance(b, Figure):
            img_w = width * 0.86
            from PIL import Image

            with Image.open(b.path) as im:
                ratio = im.height / im.width
            if pdf.get_y() + img_w * ratio + 10 > pdf.h - pdf.b_margin:
                pdf.add_page()
            pdf.image(str(b.path), x=pdf.l_margin + (width - img_w) / 2, w=img_w)
            pdf.set_text_color(90, 90, 90)
            text(b.caption, 8, "I", 4.2)
            pdf.set_text_color(0, 0, 0)
            pdf.ln(2)
        elif isinstance(b, Callout):
            fill = {"ok": (222, 242, 228), "warning": (252, 243, 207), "error": (248, 215, 218)}.get(b.kind, (232, 238, 246))
            pdf.set_fill_color(*fill)
            pdf.set_font("DejaVu", "B", 9.5)
            pdf.multi_cell(width, 5.2, b.text, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L", fill=True, padding=2)
            pdf.set_fill_color(255, 255, 255)
            pdf.ln(2)
        elif isinstance(b, SignatureBlock):
            if pdf.get_y() > pdf.h - 20 - 11 * len(b.fields):
                pdf.add_page()
            for label, value in b.fields:
                pdf.set_font("DejaVu", "B", 9.5)
                pdf.cell(width * 0.32, 9, label)
                pdf.set_font("DejaVu", "", 9.5)
                x, y = pdf.get_x(), pdf.get_y()
                pdf.cell(width * 0.68, 9, value, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.line(x, y + 8, x + width * 0.66, y + 8)
            pdf.ln(2)
        elif isinstance(b, PageBreak):
            pdf.add_page()
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path
