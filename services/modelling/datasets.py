"""Labelled image folders: HAM10000, Derm7pt and a plain CSV layout, as one list of samples.

Every sample carries what is known about it and nothing more: a diagnosis (one of the seven
HAM10000 classes) when the source gives one that maps, BCC yes/no, and pattern labels only
where experts gave them (Derm7pt: PN = pigment network present, AT = arborizing vessels).
Missing labels are ``None`` and are left out of every loss and metric.

Layouts (``load_dataset`` tells them apart by their CSV file):
- HAM10000: ``metadata.csv`` (lesion_id, image_id, dx, ...) and ``images/<image_id>.jpg``;
  ``sources.csv`` (image_id, source), where present, names each image's collection.
- Derm7pt: ``meta.csv`` (diagnosis, pigment_network, vascular_structures, derm, ...) and
  ``images/<derm>``.
- Plain: ``labels.csv`` with a column ``image`` (path under the folder) and any of ``dx``
  (nv mel bcc akiec bkl df vasc), ``bcc`` (0/1), any of the seven patterns ``PN UL BO MG ML
  SW AT`` (0/1), ``group`` (images of one lesion share a group, so they never straddle a
  cross-validation split), ``source`` (the collection, e.g. the clinic; default the folder's
  name). ``dermatriage labels export`` writes this layout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config
from ..diagnosis.patterns import PATTERNS
from ..errors import ValidationError

DIAGNOSES = ("nv", "mel", "bcc", "akiec", "bkl", "df", "vasc")
DIAGNOSIS_NAMES = {"nv": "melanocytic naevus", "mel": "melanoma", "bcc": "basal cell carcinoma",
                   "akiec": "actinic keratosis / intraepithelial carcinoma (SCC in situ)",
                   "bkl": "benign keratosis", "df": "dermatofibroma", "vasc": "vascular lesion"}
LABELLED_PATTERNS = ("PN", "AT")
ALL_PATTERNS = ("PN", "UL", "BO", "MG", "ML", "SW", "AT")

# Derm7pt's diagnoses in HAM10000's classes; the rest (melanosis, miscellaneous) have none.
DERM7PT_DIAGNOSES = {
    "basal cell carcinoma": "bcc", "blue nevus": "nv", "clark nevus": "nv", "combined nevus": "nv",
    "congenital nevus": "nv", "dermal nevus": "nv", "recurrent nevus": "nv",
    "reed or spitz nevus": "nv", "dermatofibroma": "df", "lentigo": "bkl",
    "seborrheic keratosis": "bkl", "vascular lesion": "vasc",
}


@dataclass(frozen=True)
class Sample:
    path: Path
    group: str
    source: str
    dx: str | None = None
    bcc: int | None = None
    PN: int | None = None
    AT: int | None = None
    # Only from labels.csv (e.g. a labelling set's export): no public dataset labels these.
    UL: int | None = None
    BO: int | None = None
    MG: int | None = None
    ML: int | None = None
    SW: int | None = None
    # The collection the image comes from (HAM10000's four sources, derm7pt, or a labels.csv
    # ``source`` column): held out whole to stand in for a clinic the model never saw.
    collection: str = ""


def load_ham10000(folder: Path) -> list[Sample]:
    # sources.csv (image_id, source) names each image's collection where the copy has it.
    sources = ({row["image_id"]: row["source"].strip() for row in csv.DictReader(open(folder / "sources.csv"))}
               if (folder / "sources.csv").is_file() else {})
    out = []
    for row in csv.DictReader(open(folder / "metadata.csv")):
        dx = row["dx"].strip()
        if dx not in DIAGNOSES:
            raise ValidationError(f"{folder}: unknown diagnosis {dx!r} for {row['image_id']}", "dx")
        out.append(Sample(folder / "images" / f"{row['image_id']}.jpg", "ham:" + row["lesion_id"],
                          "ham10000", dx, int(dx == "bcc"),
                          collection=sources.get(row["image_id"], "ham10000")))
    return out


def load_derm7pt(folder: Path) -> list[Sample]:
    out = []
    for row in csv.DictReader(open(folder / "meta.csv")):
        diagnosis = row["diagnosis"].strip().lower()
        dx = "mel" if diagnosis.startswith("melanoma") else DERM7PT_DIAGNOSES.get(diagnosis)
        out.append(Sample(folder / "images" / row["derm"], "derm7pt:" + row["derm"], "derm7pt", dx,
                          int(diagnosis == "basal cell carcinoma"),
                          PN=int(row["pigment_network"].strip() != "absent"),
                          AT=int(row["vascular_structures"].strip() == "arborizing"), collection="derm7pt"))
    return out


def _flag(value: str, column: str, image: str) -> int | None:
    value = (value or "").strip().lower()
    if value == "":
        return None
    if value in ("1", "true", "yes"):
        return 1
    if value in ("0", "false", "no"):
        return 0
    raise ValidationError(f"labels.csv: {column} of {image} must be 0 or 1, not {value!r}", column)


def load_labels_csv(folder: Path) -> list[Sample]:
    out = []
    for row in csv.DictReader(open(folder / "labels.csv")):
        image = (row.get("image") or "").strip()
        if not image:
            raise ValidationError("labels.csv needs an 'image' column with a path per row", "image")
        dx = (row.get("dx") or "").strip() or None
        if dx is not None and dx not in DIAGNOSES:
            raise ValidationError(f"labels.csv: dx of {image} must be one of {', '.join(DIAGNOSES)}", "dx")
        bcc = _flag(row.get("bcc", ""), "bcc", image)
        out.append(Sample(folder / image, "csv:" + ((row.get("group") or "").strip() or image), "csv", dx,
                          bcc if bcc is not None else (None if dx is None else int(dx == "bcc")),
                          **{code: _flag(row.get(code, ""), code, image) for code in ALL_PATTERNS},
                          collection=(row.get("source") or "").strip() or folder.name))
    return out


def load_dataset(folder: Path) -> list[Sample]:
    folder = Path(folder)
    for name, loader in (("metadata.csv", load_ham10000), ("meta.csv", load_derm7pt),
                         ("labels.csv", load_labels_csv)):
        if (folder / name).is_file():
            samples = loader(folder)
            missing = [s.path for s in samples if not s.path.is_file()]
            if missing:
                raise ValidationError(f"{len(missing)} images listed in {folder / name} are missing, "
                                      f"e.g. {missing[0]}", "images")
            if not samples:
                raise ValidationError(f"{folder / name} lists no images", "images")
            return samples
    raise ValidationError(f"{folder} has none of metadata.csv (HAM10000), meta.csv (Derm7pt) "
                          "or labels.csv", "dataset")


# --- the shared data as one training set, its labels as tensors --------------------------------
def shared_samples(limit: int | None = None) -> list[Sample]:
    root = config.shared_data_dir()
    ham, d7 = root / "ham10000-224", root / "derm7pt"
    if not (ham / "metadata.csv").is_file() or not (d7 / "meta.csv").is_file():
        raise ValidationError(f"real training data not found under {root} (ham10000-224/, derm7pt/)",
                              "data")
    a, b = load_ham10000(ham), load_derm7pt(d7)
    if limit:
        # Keep both classes of every label in a small subset: interleave by diagnosis.
        a = _spread(a, limit)
        b = _spread(b, max(8, limit // 4))
    return a + b


def _spread(samples: list[Sample], n: int) -> list[Sample]:
    by: dict = {}
    for s in samples:
        by.setdefault((s.dx, s.AT), []).append(s)
    out, i = [], 0
    while len(out) < min(n, len(samples)):
        for group in by.values():
            if i < len(group) and len(out) < n:
                out.append(group[i])
        i += 1
    return out


@dataclass
class Labels:
    dx: torch.Tensor          # (N,) class index or -1
    bcc: torch.Tensor         # (N,) 0/1 or -1
    patterns: torch.Tensor    # (N, 7) 0/1 or -1
    labelled: tuple[str, ...] = ("PN", "AT")   # patterns with enough real labels (validated)

    @classmethod
    def of(cls, samples: list[Sample], min_labels: int = 10) -> "Labels":
        dx = torch.tensor([DIAGNOSES.index(s.dx) if s.dx else -1 for s in samples])
        bcc = torch.tensor([-1 if s.bcc is None else s.bcc for s in samples])
        pat = torch.full((len(samples), len(PATTERNS)), -1)
        for i, s in enumerate(samples):
            for j, code in enumerate(PATTERNS):
                value = getattr(s, code)
                if value is not None:
                    pat[i, j] = value
        labelled = tuple(code for j, code in enumerate(PATTERNS)
                         if (pat[:, j] == 1).sum() >= min_labels and (pat[:, j] == 0).sum() >= min_labels)
        for j, code in enumerate(PATTERNS):
            if code not in labelled:
                pat[:, j] = -1      # too few real labels to fit or validate a head on
        return cls(dx, bcc, pat, labelled)

    def subset(self, rows) -> "Labels":
        return Labels(self.dx[rows], self.bcc[rows], self.patterns[rows], self.labelled)
