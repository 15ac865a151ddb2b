"""Builds the labelled retrieval set of benches/keyword.rs from AppStream metadata.

Source: the DEP-11 AppStream metadata of Debian 12 (bookworm) main, as apt fetches it
(/var/lib/apt/lists/*_bookworm_main_dep11_Components-amd64.yml.gz). The AppStream specification
requires upstream metadata to carry a permissive metadata license (CC0-1.0, CC-BY-3.0/4.0,
CC-BY-SA-3.0/4.0, GFDL-1.3, FSFAP, MIT, ...); each record names the component and package it
comes from (attribution).

For each language (C = English, ja, zh_CN), a component with both a Summary and a Description
in that language gives one document (the description, markup removed) and one query (the
summary) whose one relevant document is that description: known-item retrieval, where the
query paraphrases its document. Components whose description repeats another's are left out.

usage: python3 extract_appstream.py COMPONENTS.yml.gz > appstream.jsonl
"""

import gzip
import html
import json
import re
import sys

import yaml

LANGS = {"C": "en", "ja": "ja", "zh_CN": "zh"}


def text(markup):
    t = re.sub(r"<[^>]+>", " ", markup)
    return re.sub(r"\s+", " ", html.unescape(t)).strip()


def main(path):
    seen = {lang: set() for lang in LANGS.values()}
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = yaml.safe_load_all(f)
        next(docs)  # the header
        for c in docs:
            if not c:
                continue
            summary, description = c.get("Summary") or {}, c.get("Description") or {}
            for key, lang in LANGS.items():
                s, d = summary.get(key), description.get(key)
                if not s or not d:
                    continue
                d = text(d)
                s = text(s)
                if len(d) < 40 or d in seen[lang] or len(d) > 16000:
                    continue
                seen[lang].add(d)
                out.append({
                    "id": f"{lang}:{c['ID']}",
                    "lang": lang,
                    "component": c["ID"],
                    "package": c.get("Package", ""),
                    "query": s,
                    "document": d,
                })
    for r in out:
        print(json.dumps(r, ensure_ascii=False))


main(sys.argv[1])
