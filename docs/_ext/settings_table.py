"""The ``dimlearn-settings`` directive: the table of the estimator's parameters, made at
build time from :data:`dimlearn.settings.SETTINGS` (the one source of the parameters), so
that it cannot drift from the code. Used in Markdown (MyST) pages::

    ```{dimlearn-settings}
    ```
"""

from __future__ import annotations

from sphinx.util.docutils import SphinxDirective


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """The table as Markdown: a row per parameter, in groups."""
    from dimlearn.settings import SETTINGS

    lines = [
        "| group | parameter | default | `dimlearn fit` | what it sets |",
        "| --- | --- | --- | --- | --- |",
    ]
    for setting in SETTINGS.values():
        default = setting.default
        shown = f'"{default}"' if isinstance(default, str) else repr(default)
        flag = f"`{setting.flag}`" if setting.flag else f"Python only: {setting.cli.why}"
        lines.append(
            f"| {setting.group} | `{setting.name}` | `{_cell(shown)}` | {_cell(flag)} "
            f"| {_cell(setting.help)} |"
        )
    return "\n".join(lines)


class SettingsTable(SphinxDirective):
    has_content = False

    def run(self):
        return self.parse_text_to_nodes(settings_markdown())


def setup(app):
    app.add_directive("dimlearn-settings", SettingsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
