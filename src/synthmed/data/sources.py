"""The data sources: ``read_source(cfg)`` dispatches a spec string to its reader; each returns a ``Raw`` set with the
image policy already applied (or, with ``facts_only``, the facts ``data info`` needs).

Spec strings: ``npz:PATH``, ``medmnist:NAME[:SIZE]`` (sources_npz.py), ``folder:PATH``, ``csv:PATH``,
``dicom:DIR`` or ``dicom:FILE.csv`` (sources_files.py, dicom.py), ``phantom:blood`` (phantom.py).
Every problem with the input is a one-line ``DataError`` naming the file, folder, key or row.
"""

from __future__ import annotations

from pathlib import Path

from synthmed.data.config import DataConfig
from synthmed.data.policy import describe, fit_array
from synthmed.data.raw import SPLITS, ImageFacts, Raw, array_facts
from synthmed.data.sources_files import read_csv, read_folder
from synthmed.data.sources_npz import clean_class_name, data_root, is_offline, medmnist_file, read_npz
from synthmed.errors import DataError

KINDS = ("npz", "medmnist", "folder", "csv", "dicom", "phantom")


def parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in KINDS or not rest:
        raise DataError(f"bad data source '{spec}': expected one of npz:PATH, medmnist:NAME[:SIZE], folder:PATH, "
                        f"csv:PATH, dicom:DIR|CSV, phantom:blood")
    return kind, rest


def read_source(cfg: DataConfig, facts_only: bool = False) -> Raw:
    """Read ``cfg.source``; ``facts_only`` keeps no pixels and needs no common size (``Raw.facts``)."""
    kind, rest = parse_spec(cfg.source)
    if kind == "npz":
        return read_npz(Path(rest).expanduser(), cfg, facts_only)
    if kind == "medmnist":
        return read_npz(medmnist_file(rest, cfg), cfg, facts_only)
    if kind == "folder":
        return read_folder(Path(rest).expanduser(), cfg, facts_only)
    if kind == "csv":
        return read_csv(Path(rest).expanduser(), cfg, facts_only)
    if kind == "dicom":
        path = Path(rest).expanduser()
        if path.suffix.lower() == ".csv":
            return read_csv(path, cfg, facts_only)
        if path.is_file():
            raise DataError(f"dicom:{rest}: give a folder of class folders of .dcm files, or a CSV (path,label[,split,group])")
        return read_folder(path, cfg, facts_only, dicom=True)
    return read_phantom(rest, cfg, facts_only)


def read_phantom(rest: str, cfg: DataConfig, facts_only: bool = False) -> Raw:
    from synthmed.data.phantom import make_phantom

    if rest != "blood":
        raise DataError(f"unknown phantom 'phantom:{rest}': the only phantom is phantom:blood")
    p = cfg.phantom
    size = cfg.size if cfg.size is not None and 28 <= cfg.size <= 128 else p.size
    images, labels, classes = make_phantom(p.n_classes, p.n_per_class, size, p.seed)
    warn: list[str] = []
    images = fit_array(images, cfg.size, cfg.resize, cfg.channels, warn, "phantom:blood")
    ids = [f"phantom/{i:05d}" for i in range(len(labels))]
    policy = describe(cfg.size, cfg.resize, images.shape[3], images.shape[1:3], {(size, size)})
    facts = array_facts(images) if facts_only else None
    return Raw(None if facts_only else images, labels, ids, classes, None, None, policy, warn, facts)


__all__ = ["KINDS", "SPLITS", "ImageFacts", "Raw", "clean_class_name", "data_root", "is_offline", "medmnist_file",
           "parse_spec", "read_csv", "read_folder", "read_npz", "read_phantom", "read_source"]
