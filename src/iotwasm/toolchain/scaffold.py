"""`iotwasm new`: a project from a template: the source in the chosen language, a manifest
(Deployment + Route) ready to apply, samples.yaml (inputs with their expected outputs and dead
letters, run by `iotwasm test`) and a five-line README.

Templates live in toolchain/templates/: <template>/{manifest.yaml, samples.yaml} describe what
the module does, the same in every language; <template>/<language>/ holds its source and
_common/<language>/ the files every project of that language has. Placeholders: {{name}},
{{crate}} (the name as a Rust crate), {{table}} (as an SQL table), {{sdk}}, {{template}},
{{title}}, {{lang}}, {{summary}}, {{source}}, {{resources}} (the Deployment's limits, which
depend on the language: a component carries its interpreter).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from .languages import LANGUAGES, NotAvailable, language, sdk_root
from .project import MANIFEST, SAMPLES

#: template -> what it does (shown by `iotwasm new --list` and in the project's README)
TEMPLATES: dict[str, str] = {
    "filter": "passes JSON readings whose value lies in [min, max]",
    "transform": "rewrites value as value * scale + offset, keeping the other members",
    "decoder": "decodes the binary frames of the simulated sensors into JSON",
    "aggregate": "count, mean, min and max of every `window` readings per device",
}
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
#: files stored under another name in the package (a .gitignore would be left out of it)
RENAMED = {"gitignore": ".gitignore"}


def templates_dir() -> Path:
    return Path(str(resources.files("iotwasm.toolchain") / "templates"))


def available_templates(lang: str) -> list[str]:
    return [t for t in TEMPLATES if (templates_dir() / t / lang).is_dir()]


def new_project(name: str, lang: str, template: str = "filter", parent: Path = Path(".")) -> Path:
    """Create parent/name from a template; returns the project directory."""
    if not NAME.match(name):
        raise ConfigError(f"project name {name!r}: lowercase letters, digits and '-', starting with "
                          "a letter (it names the deployment and the route too)")
    lg = language(lang)
    if not lg.available:
        lg.check()  # raises NotAvailable, saying why
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r} (known: {', '.join(TEMPLATES)})")
    source_dir = templates_dir() / template / lang
    if not source_dir.is_dir():
        raise NotAvailable(f"no {template} template for {lang} yet "
                           f"(it has: {', '.join(available_templates(lang)) or 'none'})")
    dest = Path(parent) / name
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest} exists and is not empty")
    files: dict[str, str] = {}
    for base in (templates_dir() / "_common" / lang, source_dir):
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file():
                    rel = p.relative_to(base)
                    files[str(rel.with_name(RENAMED.get(rel.name, rel.name)))] = p.read_text()
    for shared in (MANIFEST, SAMPLES):
        files[shared] = (templates_dir() / template / shared).read_text()
    files["README.md"] = (templates_dir() / "README.md").read_text()
    sources = sorted(f for f in files if f not in (MANIFEST, SAMPLES, "README.md") and not f.startswith("."))
    values = {"name": name, "crate": name.replace("-", "_"), "table": name.replace("-", "_"),
              "sdk": str(sdk_root().resolve()), "template": template, "title": lg.title,
              "lang": lang, "summary": TEMPLATES[template], "source": ", ".join(sources),
              "resources": lg.resources}
    for name_in_project, text in files.items():
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        out = dest / name_in_project
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return dest


def listing() -> list[tuple[str, str, str, list[str]]]:
    """(language, status, toolchain, templates) for every registered language."""
    rows = []
    for lg in LANGUAGES.values():
        status = "ready" if lg.available else "not available yet"
        rows.append((lg.name, status, lg.toolchain, available_templates(lg.name) if lg.available else []))
    return rows
