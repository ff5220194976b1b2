"""``pipeline card OUT``: ``OUT/README.md``, a Hugging Face dataset card made from what OUT knows.

The YAML header (licence, size category, task categories, the features with their types as the
``datasets`` webdataset loader sees them, the train split) is followed by prose: source and
input, counts per stage, status and reason, each stage's model, weights sha256, licence (from
the weights registry) and whether the weights were random, the distributions the report shows
(as small tables), the audit's results (outliers, duplicates, leaks into other folders), how to
load the shards, and the licence terms of the source dataset and of every model.
Reads OUT only; writes ``OUT/README.md`` (or, for ``pipeline export --format hf``, DIR/README.md).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.compute as pc
import yaml

from pipeline import layout
from pipeline.readers.inspect.load import RunData, load
from pipeline.licences import SOURCE_TERMS, UNKNOWN_TERMS, model_license
from schemas import audit as audit_schema
from schemas.shard import MEMBERS

CARD = layout.CARD
FEATURE_SAMPLES = 16  # samples whose json the feature types are inferred from


TASKS = {"caption": "image-to-text", "detail_caption": "image-to-text", "parsing": "image-segmentation",
         "landmarks": "depth-estimation", "identity": "image-feature-extraction"}
SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``n`` examples."""
    return next((label for limit, label in SIZES if n < limit), "100M<n<1B")


# --- features -------------------------------------------------------------------------------

def _arrow_feature(t: pa.DataType) -> dict[str, Any]:
    """An Arrow type as a dataset-card feature entry (without its name)."""
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_arrow_feature(f.type)} for f in t]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _arrow_feature(t.value_type)
        return {"list": inner["struct"]} if "struct" in inner else {"sequence": inner.get("dtype", inner)}
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return {"dtype": "string"}
    if pa.types.is_boolean(t):
        return {"dtype": "bool"}
    if pa.types.is_floating(t):
        return {"dtype": f"float{t.bit_width}"}  # Arrow says double/float/halffloat
    return {"dtype": str(t)}  # int64, null, ...


def _npy_feature(data: bytes) -> dict[str, Any]:
    arr = np.load(io.BytesIO(data))
    feature: Any = str(arr.dtype)
    for _ in range(max(arr.ndim, 1)):
        feature = {"sequence": feature}
    return feature


def json_type(out: Path, docs: list[dict]) -> pa.DataType:
    """The type of ``<key>.json``: each stage's section from its manifest schema (as declared, so
    a column that is null in the first samples keeps its real type); the free-form source
    metadata inferred from ``docs``."""
    from pipeline.core.pack import PROVENANCE
    from schemas.common import COMMON
    from schemas.shard import meta_section

    inferred = pa.array(docs).type
    fields = {f.name: f for f in inferred}
    root = layout.manifests(out)
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = sorted(stage_dir.glob("*.parquet"))
        if not files:
            continue
        schema = pq.read_schema(files[0])
        if stage_dir.name == "source":
            keep = [f for f in schema if f.name not in COMMON.names and f.name != "meta"]
            src_t = fields["source"].type if "source" in fields else pa.struct([])
            idx = src_t.get_field_index("meta")
            meta = src_t.field(idx) if idx >= 0 else None
            fields["source"] = pa.field("source", pa.struct([pa.field("key", pa.string()), *keep,
                                                             *([meta] if meta is not None else [])]))
            continue
        section = meta_section(stage_dir.name)
        if section in fields:
            keep = [f for f in schema if f.name not in COMMON.names or f.name in PROVENANCE]
            fields[section] = pa.field(section, pa.struct(keep))
    return pa.struct(list(fields.values()))


def features(tar: Path, out: Path | None = None) -> list[dict[str, Any]]:
    """The features of the samples in ``tar``: members by suffix, the json's nested types."""
    members: dict[str, bytes] = {}
    docs: list[dict] = []
    with tarfile.open(tar, "r:") as t:
        for info in t:
            if not info.isreg():
                continue
            suffix = info.name.partition(".")[2]
            if suffix == "json":
                if len(docs) < FEATURE_SAMPLES:
                    docs.append(json.loads(t.extractfile(info).read()))
            elif suffix not in members:
                members[suffix] = t.extractfile(info).read()
            if len(docs) >= FEATURE_SAMPLES:
                break
    root = out
    out: list[dict[str, Any]] = [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    for suffix in sorted(members):
        if suffix.endswith(".npy"):
            out.append({"name": suffix, **_npy_feature(members[suffix])})
        elif f".{suffix.rsplit('.', 1)[-1]}" in IMAGE_SUFFIXES:
            out.append({"name": suffix, "dtype": "image"})
        else:
            out.append({"name": suffix, "dtype": "binary"})
    if docs:
        json_t = json_type(root, docs) if root is not None else pa.array(docs).type
        out.append({"name": "json", **_arrow_feature(json_t)})
    return out


# --- prose ----------------------------------------------------------------------------------

def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"


def counts_section(data: RunData) -> str:
    rows = []
    for name in data.stage_names:
        t = data.stages[name].table
        counts = data.stages[name].counts()
        bad = t.filter(pc.not_equal(t["status"], "ok"))
        reasons = Counter((e or "").split(":", 1)[0] or "(none)" for e in bad["error"].to_pylist())
        top = ", ".join(f"{r} ({n})" for r, n in reasons.most_common(5)) or "—"
        rows.append([name, counts.get("ok", 0), counts.get("skipped", 0), counts.get("error", 0), top])
    return _table(["stage", "ok", "skipped", "error", "reasons (count)"], rows)


def models_section(data: RunData) -> tuple[str, list[dict[str, Any]]]:
    """The stage/model table and the distinct models (for the licence section)."""
    rows, models = [], []
    run_prov = data.run.get("provenance", {})
    for name in [n for n in data.stage_names if n != "source"]:  # the source step runs no model
        provs = data.stages[name].provenance() or ([run_prov[name]] if name in run_prov else [])
        for p in provs or [{}]:
            model = p.get("model")
            random = bool(p.get("weights_random"))
            lic = model_license(model)
            rows.append([f"`{name}`", model or "—", f"`{p.get('weights_sha256') or '—'}`", lic,
                         "**RANDOM (not real annotations)**" if random else "no"])
            if model and model not in {m["model"] for m in models}:
                models.append({"model": model, "license": lic, "stage": name, "random": random})
    return _table(["stage", "model", "weights sha256", "licence", "random weights"], rows), models


def distributions_section(data: RunData) -> str:
    rows = []
    for name in data.stage_names:
        table = data.stages[name].table
        for col in table.column_names:
            if col in ("duration_s",) or not (pa.types.is_floating(table[col].type)
                                              or pa.types.is_integer(table[col].type)):
                continue
            v = data.stages[name].values(col)
            if not len(v):
                continue
            q = np.percentile(v, [0, 5, 50, 95, 100])
            rows.append([f"{name}.{col}", len(v), _fmt(v.mean()), _fmt(v.std()), *map(_fmt, q)])
    if "caption" in data.stages:  # list columns: the best kept caption's score, words per caption
        t = data.stages["caption"].table
        t = t.filter(pc.equal(t["status"], "ok"))
        extra = {"caption best CLIP score": [v[0] for v in t["caption_scores"].to_pylist() if v]
                 if "caption_scores" in t.column_names else [],
                 "caption words": [len(c.split()) for v in t["captions"].to_pylist() for c in (v or [])]
                 if "captions" in t.column_names else []}
        for label, values in extra.items():
            if values:
                v = np.asarray(values, np.float64)
                rows.append([label, len(v), _fmt(v.mean()), _fmt(v.std()),
                             *map(_fmt, np.percentile(v, [0, 5, 50, 95, 100]))])
    per_id = np.array(list(Counter(data.identity_of.values()).values()) or [0], np.float64)
    rows.append(["images per identity", len(per_id), _fmt(per_id.mean()), _fmt(per_id.std()),
                 *map(_fmt, np.percentile(per_id, [0, 5, 50, 95, 100]))])
    return _table(["column (ok rows)", "n", "mean", "std", "min", "p5", "median", "p95", "max"], rows)


def audit_section(out: Path) -> str:
    path = out / audit_schema.AUDIT_DIR / audit_schema.SUMMARY_FILE
    if not path.is_file():
        return "The identity audit has not run (`pipeline audit OUT [--against OTHER]`)."
    s = json.loads(path.read_text())
    lines = [f"Identity audit with `{s.get('model')}` (same-identity cosine {s.get('threshold'):.3f}, "
             f"{s.get('threshold_source')}): {s.get('outliers')} outliers, {s.get('duplicates')} exact and "
             f"{s.get('near_duplicates')} near duplicates within identities "
             f"(near-duplicate cosine {s.get('near_duplicate_cosine')}), {s.get('candidate_merges')} candidate "
             f"identity merges; {s.get('excluded_from_pairing')} samples are excluded from reference pairing."]
    leaks = s.get("leaks")
    if leaks:
        lines.append("")
        lines.append("Leakage into other output folders (`audit/leaks.parquet`, `leaks` SQL view; "
                     f"`--exclude-leaks` drops {leaks.get('excluded_samples')} samples):")
        lines.append("")
        lines.append(_table(["other folder", "shared identities", "identity pairs", "exact duplicate photos",
                             "near-duplicate photos"],
                            [[f"`{f['folder']}`", f["identities"], f["identity_pairs"], f["exact_duplicates"],
                              f["near_duplicates"]] for f in leaks.get("against", [])]))
    else:
        lines.append("\nNo leakage check against other folders has run (`pipeline audit OUT --against EVAL_OUT`).")
    return "\n".join(lines)


LOADING = '''```python
import webdataset as wds                       # streaming
for sample in wds.WebDataset({urls}).decode("pil"):
    print(sample["__key__"], sorted(sample))

import wids                                    # random access (pip install wids)
{wids}

from datasets import load_dataset              # Hugging Face datasets
ds = load_dataset("webdataset", data_files={{"train": "{glob}"}}, split="train")
```'''
WIDS_FROM_INDEX = ('import json\nindex = json.load(open("shards/index.json"))["shards"]\n'
                   'ds = wids.ShardListDataset([{"url": f"shards/{name}.tar", "nsamples": s["samples"]}\n'
                   '                            for name, s in sorted(index.items())])')


def wids_list(shards: list[tuple[str, int]]) -> str:
    """The wids line for an explicit list of (tar, samples)."""
    items = ", ".join(f'{{"url": "{u}", "nsamples": {n}}}' for u, n in shards)
    return f"ds = wids.ShardListDataset([{items}])"


def render(out: Path | str, data_files: str = "shards/*.tar", tar: Path | None = None,
           num_examples: int | None = None, note: str = "",
           shards: list[tuple[str, int]] | None = None) -> str:
    """The card's text for ``out``; ``data_files``, ``tar`` (one shard to read the features
    from), ``num_examples`` and ``shards`` (tar, samples) describe the shards when they are an
    export's rather than OUT's own."""
    out = Path(out)
    data = load(out)
    config = data.config
    source = str(config.get("source") or json.loads(layout.plan_info(out).read_text()).get("source", ""))
    terms = SOURCE_TERMS.get(source, UNKNOWN_TERMS)
    tars = layout.shard_tars(out)
    tar = tar or (tars[0] if tars else None)
    n = num_examples if num_examples is not None else int(data.shard_index.get("samples", 0))
    stages = [s for s in data.stage_names if s != "source"]
    table, models = models_section(data)
    feats = features(tar, out) if tar else []
    present = {f["name"] for f in feats}
    size = sum(p.stat().st_size for p in tar.parent.glob(Path(data_files).name)) if tar else 0
    header: dict[str, Any] = {
        "pretty_name": f"faceweave: {source} ({', '.join(stages)})",
        "license": terms.license,
        **({"license_name": terms.name.lower().replace(" ", "-").replace("/", "-")} if terms.license == "other" else {}),
        **({"license_link": terms.link} if terms.license == "other" and terms.link else {}),
        "size_categories": [size_category(n)],
        "task_categories": ["text-to-image", *sorted({TASKS[s] for s in stages if s in TASKS})],
        "tags": ["faces", "identity", "webdataset", "faceweave", *(["random-weights"] if data.random_stages() else [])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
        "dataset_info": {"features": feats, "splits": [{"name": "train", "num_bytes": size, "num_examples": n}]},
    }
    random = data.random_stages()
    identities = len(set(data.identity_of.values()))
    plan = json.loads(layout.plan_info(out).read_text()) if layout.plan_info(out).is_file() else {}
    members = "\n".join(f"- `{sfx}` ({stage}): {desc}" for sfx, (stage, desc) in MEMBERS.items()
                        if sfx in present)
    glob_wds = data_files.replace("*", f"{{{tars[0].stem}..{tars[-1].stem}}}") if tars else data_files
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---",
        f"# {header['pretty_name']}",
        ("> **Warning: stages " + ", ".join(f"`{s}` ({m})" for s, m in random.items()) + " ran with random "
         "weights: their columns are not real annotations.**") if random else "",
        "## Dataset summary",
        f"Built by faceweave from the `{source}` source (input `{config.get('input') or plan.get('input', '')}`): "
        f"{len(data.identity_of)} planned samples of {identities} identities, {n} packed into WebDataset shards "
        f"(every sample ok in every stage). Stages, in run order: {', '.join(f'`{s}`' for s in stages)}. "
        "Every manifest row records the model and weights sha256 that made it." + (f" {note}" if note else ""),
        "## Samples per stage, status and reason",
        counts_section(data),
        "## Annotations: models and weights",
        table,
        "Per-sample files in the shards:\n\n" + (members or "- none besides `jpg` and `json`"),
        "## Distributions",
        distributions_section(data),
        "## Audit",
        audit_section(out),
        "## How to load",
        LOADING.format(urls=json.dumps([u for u, _ in shards]) if shards is not None else json.dumps(glob_wds),
                       glob=data_files,
                       wids=wids_list(shards) if shards is not None else WIDS_FROM_INDEX),
        "## Licence",
        f"**Source data — {terms.name}** (`{source}`): {terms.text}" + (f" <{terms.link}>" if terms.link else ""),
        "**Models** (the annotations are outputs of these models; their licences may restrict use):\n\n"
        + (_table(["model", "stage", "licence"], [[m["model"], m["stage"], m["license"]] for m in models])
           if models else "none"),
        "The licences above are recorded in faceweave's weights registry and may be summaries: the "
        "upstream terms of each dataset and model prevail.",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_card(out: Path | str, to: Path | None = None, **kwargs: Any) -> Path:
    """Write the card to ``OUT/README.md`` (or ``to``); its path."""
    out = Path(out)
    if not layout.manifests(out).is_dir():
        raise FileNotFoundError(f"{out} holds no manifests/: not a pipeline output folder")
    path = Path(to) if to is not None else layout.card(out)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(render(out, **kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path
