"""The same filters as steps of `datatrove` (HuggingFace's data-processing engine), for corpora beyond one machine.

`datatrove` shards the input files over tasks and runs them with a `LocalPipelineExecutor` (processes on
this machine) or, unchanged, with its Slurm/Ray executors on a cluster; we write no scheduler. Our part is
two pipeline steps:

* `GenforgeNormalize`: `clean.normalize` on each document's text;
* `GenforgeFilter`: the rules and the learned classifiers of `pipeline.clean_corpus`, batched (the same
  `_Worker.process` code), dropping with the same reasons (datatrove counts them as `dropped_<reason>`).

Dedup needs a global view, so across machines it belongs to datatrove's own multi-stage steps
(`MinhashDedupSignature` -> `Buckets` -> `Cluster` -> `Filter`, and `ExactDedup*`) chained after these
with `depends=`; we have not wired them in, because their English word tokenizer needs spaCy (not a
genforge dependency). On one machine `clean_corpus` stays the reference: with dedup off, both write the
same documents (tests/data/test_distributed.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from genforge.data.clean import CleanConfig, normalize
from genforge.errors import ConfigError
from genforge.extras import require

require("datatrove", "data")

from datatrove.data import Document  # noqa: E402  (after the extra check, for a clear error)
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402
from datatrove.pipeline.filters.base_filter import BaseFilter  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402


class GenforgeNormalize(PipelineStep):
    """Unicode NFC, no control or zero-width characters, tidy whitespace (`genforge.data.clean.normalize`)."""

    name = "genforge normalize"
    type = "✂️ - FORMAT"

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            with self.track_time():
                doc.text = normalize(doc.text)
            yield doc


class GenforgeFilter(BaseFilter):
    """genforge's rules + learned classifiers as one batched datatrove filter (reasons as in `clean_corpus`)."""

    name = "genforge filters"

    def __init__(self, cfg: CleanConfig | None = None, filters_dir: str | None = None, exclusion_writer=None,
                 batch_size: int = 256) -> None:
        super().__init__(exclusion_writer, batch_size=batch_size)
        # no dedup here: it needs a global view (datatrove's dedup stages), not one shard's
        self.cfg = dataclasses.replace(cfg or CleanConfig(), dedup_exact=False, dedup_near=False, workers=1,
                                       pack_to="", pack_tokenizer="")
        self.filters_dir = filters_dir
        self._worker = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        if self._worker is None:  # built in the task's process (the step is pickled to it)
            from genforge.data.pipeline import _Worker

            self._worker = _Worker(self.cfg, self.filters_dir)
        res = self._worker.process([(str(d.id), d.text, "") for d in batch], all_texts=True)
        out: list[bool | tuple[bool, str]] = []
        for doc, text, why in zip(batch, res["all_texts"], res["why"]):
            doc.text = text
            out.append(True if why is None else (False, why[0]))
            if why is not None:
                doc.metadata["reason"], doc.metadata["detail"] = why
        return out


def _id_text(self, doc: Document) -> dict:
    return {"id": doc.id, "text": doc.text}


def _removed_row(self, doc: Document) -> dict:
    return {"id": doc.id, "reason": doc.metadata.get("reason", "near_dup"), "detail": doc.metadata.get("detail", "")}


def clean_with_datatrove(inputs: str | os.PathLike, out_dir: str | os.PathLike, cfg: CleanConfig | None = None, *,
                         tasks: int = 2, workers: int = -1) -> Path:
    """Run normalisation and the filters as datatrove steps over a folder or file of JSONL.

    Writes `out_dir/kept/<rank>.jsonl` ({"id", "text"}), `out_dir/removed/<rank>.jsonl` and datatrove's logs
    and stats under `out_dir/logs/`. The classifiers are trained (or loaded) once, before the tasks start,
    by `pipeline.prepare_filters` into `out_dir/filters`. Returns `out_dir/kept`.
    """
    from genforge.data.pipeline import prepare_filters
    from genforge.data.readers import expand_paths

    cfg = cfg or CleanConfig()
    if cfg.pack_to:
        raise ConfigError("pack_to: the datatrove engine does not pack; run `genforge data pack` on its kept/ folder")
    if cfg.classifier == "auto":
        cfg = dataclasses.replace(cfg, classifier="world")  # datatrove and scikit-learn come in the same extra
    out = Path(out_dir)
    files = expand_paths(inputs, (".jsonl", ".jsonl.gz"))
    filters_dir = None
    if cfg.classifier != "off":
        prepare_filters(cfg, files, out / "filters")
        filters_dir = str(out / "filters")
    src = Path(inputs)
    folder, glob = (str(src), None) if src.is_dir() else (str(src.parent), src.name)
    reader = JsonlReader(folder, glob_pattern=glob, text_key=cfg.text_field, id_key=cfg.id_field,
                         add_file_path=False)
    removed = JsonlWriter(str(out / "removed"), output_filename="${rank}.jsonl", compression=None,
                          adapter=_removed_row)
    steps = [reader, GenforgeNormalize(), GenforgeFilter(cfg, filters_dir, exclusion_writer=removed)]
    kept = out / "kept"
    steps.append(JsonlWriter(str(kept), output_filename="${rank}.jsonl", compression=None, adapter=_id_text))
    LocalPipelineExecutor(steps, tasks=tasks, workers=workers, logging_dir=str(out / "logs"),
                          start_method="fork").run()
    return kept


def read_rows(folder: str | os.PathLike) -> list[dict]:
    """Every JSON row of a datatrove output folder, in rank order."""
    rows = []
    for f in sorted(Path(folder).glob("*.jsonl"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem):
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows
