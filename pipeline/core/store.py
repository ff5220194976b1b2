"""A stage's stored per-sample files for one shard: its payload tar and, once packed, the shard.

After pack writes ``shards/<shard>.tar`` the members it holds byte for byte (a stage's files,
the frame that became ``<key>.jpg``) are dropped from the stage's payload (``compact``): the
payload keeps only what the shard does not have (samples left out of it, earlier frames), and
the stage's done marker names the shard with its size and sha256, so a later run (a changed
downstream config, ``--retry-errors``, ``--refresh``) reads them back from there. A shard that
goes missing or bad invalidates those markers, and the stages are simply redone.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.manifest import ShardOutputs, TarReader, TarWriter, read_marker, write_done


class StoredFiles:
    """Read access to one stage's files of one shard, wherever they are stored."""

    def __init__(self, out: Path, stage: str, shard: str, last: str | None = None):
        self.last = last
        """The suffix stored after a sample's other files (its frame), as the writers order them."""
        outs = ShardOutputs(Path(out), stage, shard)
        self.payload = TarReader(outs.payload) if outs.payload.exists() else None
        packed = (read_marker(outs.marker) or {}).get("packed") or {}
        self.map: dict[str, str] = packed.get("members", {})
        path = Path(out) / packed["shard"] if packed else None
        self.shard = TarReader(path) if path is not None and path.exists() and self.map else None
        self._names: dict[str, list[str]] = {}
        for name in self.payload.names() if self.payload is not None else ():
            self._names.setdefault(name.partition(".")[0], []).append(name.partition(".")[2])
        if self.shard is not None:
            back = {v: k for k, v in self.map.items()}
            for name in self.shard.names():
                key, _, suffix = name.partition(".")
                if suffix in back:
                    self._names.setdefault(key, []).append(back[suffix])

    def get(self, key: str, suffix: str) -> bytes | None:
        data = self.payload.get(f"{key}.{suffix}") if self.payload is not None else None
        if data is None and self.shard is not None and suffix in self.map:
            data = self.shard.get(f"{key}.{self.map[suffix]}")
        return data

    def keys(self) -> list[str]:
        return list(self._names)

    def suffixes(self, key: str) -> list[str]:
        return list(self._names.get(key, []))

    def members(self, key: str) -> list[tuple[str, bytes]]:
        """(suffix, bytes) of every stored file of ``key``: stage files by name, frames last."""
        suffixes = sorted(self._names.get(key, []), key=lambda s: (s == self.last, s))
        return [(s, self.get(key, s)) for s in suffixes]

    def close(self) -> None:
        for tar in (self.payload, self.shard):
            if tar is not None:
                tar.close()


def compact(out: Path, stage: str, shard: str, store: StoredFiles, packed_keys: set[str],
            mapping: dict[str, str], packed_tar: TarWriter) -> None:
    """Keep in the payload only what the new shard (just written) does not hold; point the marker at it."""
    outs = ShardOutputs(Path(out), stage, shard)
    marker = read_marker(outs.marker)
    if marker is None:
        return
    writer, kept = TarWriter(outs.payload), 0
    try:
        for key in store.keys():
            for suffix, data in store.members(key):
                if key in packed_keys and suffix in mapping:
                    continue  # the shard has these bytes
                writer.add(f"{key}.{suffix}", data)
                kept += 1
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if kept == 0:
        outs.payload.unlink(missing_ok=True)
    files = [outs.manifest] + ([outs.payload] if kept else []) + [packed_tar.path]
    extra = {k: v for k, v in marker.items() if k not in ("lineage", "files", "packed")}
    packed = {"shard": str(packed_tar.path.relative_to(out)), "members": mapping}
    write_done(Path(out), outs.marker, marker["lineage"], files, [writer, packed_tar], packed=packed, **extra)


def unpack(out: Path, stage: str, shard: str, drop: set[str] = frozenset(), last: str | None = None) -> None:
    """Gather a stage's files back into its payload (minus ``drop`` keys) before its marker goes."""
    outs = ShardOutputs(Path(out), stage, shard)
    store = StoredFiles(out, stage, shard, last)
    try:
        if store.payload is None and store.shard is None:
            return
        writer = TarWriter(outs.payload)
        for key in store.keys():
            if key not in drop:
                for suffix, data in store.members(key):
                    writer.add(f"{key}.{suffix}", data)
        writer.close()
    finally:
        store.close()
