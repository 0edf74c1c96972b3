"""Math written as MathML when the page is built: no JavaScript, nothing fetched.

Sphinx's default math renderer, MathJax, loads a script from a CDN when the page is viewed,
so math stays raw LaTeX wherever the reader is offline or the CDN is blocked. This renderer
converts each ``:math:`` role and ``math`` directive (and MyST's ``$...$`` / ``$$...$$``) to
MathML with docutils' own LaTeX converter when the site is built; browsers draw MathML
natively (MathML Core: Chromium 109+, Firefox, Safari). A formula the converter cannot read
is a build warning (an error under ``-W``), not a broken page.
"""

from __future__ import annotations

from docutils import nodes
from docutils.utils.math import latex2mathml
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)


def _mathml(translator, node, latex: str, as_block: bool) -> str:
    try:
        return latex2mathml.tex2mathml(latex, as_block=as_block)
    except (latex2mathml.MathError, SyntaxError) as error:  # LaTeX it does not know
        logger.warning("math not converted to MathML (%s): %s", error, latex, location=node)
        return translator.encode(latex)


def visit_math(translator, node: nodes.math) -> None:
    translator.body.append(translator.starttag(node, "span", "", CLASS="math notranslate"))
    translator.body.append(_mathml(translator, node, node.astext(), as_block=False))
    translator.body.append("</span>")
    raise nodes.SkipNode


def visit_displaymath(translator, node: nodes.math_block) -> None:
    translator.body.append(translator.starttag(node, "div", CLASS="math notranslate"))
    if node["number"]:
        number = get_node_equation_number(translator, node)
        translator.body.append(f'<span class="eqno">({number})')
        translator.add_permalink_ref(node, "Link to this equation")
        translator.body.append("</span>")
    # blank lines separate equations, as in Sphinx's other renderers
    for part in (part for part in node.astext().split("\n\n") if part.strip()):
        if r"\\" in part and r"\begin" not in part:  # several lines: aligned
            part = r"\begin{aligned}" + part + r"\end{aligned}"
        translator.body.append(_mathml(translator, node, part, as_block=True))
    translator.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer(
        "mathml", inline_renderers=(visit_math, None), block_renderers=(visit_displaymath, None)
    )
    app.add_css_file("mathml.css")
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
