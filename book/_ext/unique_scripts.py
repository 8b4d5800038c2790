"""A Sphinx extension for this book: each page lists every script once.

sphinx-thebe (which jupyter-book 1.x always loads) adds its inline ``const THEBE_JS_URL = ...`` script
again each time the environment reads documents, and a page that declares a ``const`` twice stops with
a script error; tests/site opens the pages in a browser and fails on any script error.
"""


def unique_scripts(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # an inline script's filename is None or "" depending on who added it: the same script either way
        key = (str(getattr(script, "filename", script) or ""), repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", unique_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
