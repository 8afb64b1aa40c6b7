"""The embedded default data: synthetic studies with exact ground truth, deterministic from a seed.

Every job and test runs on these on a fresh machine, with no download:

- chest-radiograph-like studies (:func:`make_cxr_study`, :func:`write_cxr_phantoms`): anatomy with
  per-study variation, findings (:data:`FINDINGS`) at known places with laterality, size, an exact
  mask and a box, and a report written from the findings, with one box per finding phrase. Images
  follow the radiological convention (the patient's left on the image's right); see
  :mod:`workbench.data.phantoms_cxr`.
- fundus-like images (:func:`make_fundus`, :func:`write_fundus_phantoms`): a field-of-view disc,
  optic disc, macula and grown vessel trees with exact vessel masks, also in the DRIVE layout;
  see :mod:`workbench.data.phantoms_fundus`.

A study or image depends only on ``(seed, index)``, so generation is order-free and parallelisable.
File layouts and manifests are described in :mod:`workbench.data.phantoms_io`.
"""

from __future__ import annotations

from workbench.data.phantoms_cxr import FINDINGS, CxrStudy, Finding, make_cxr_study, mask_box
from workbench.data.phantoms_fundus import FundusImage, make_fundus
from workbench.data.phantoms_io import drive_numbers, split_for_index, write_cxr_dicom, write_cxr_phantoms, write_fundus_phantoms

__all__ = [
    "FINDINGS",
    "CxrStudy",
    "Finding",
    "FundusImage",
    "drive_numbers",
    "make_cxr_study",
    "make_fundus",
    "mask_box",
    "split_for_index",
    "write_cxr_dicom",
    "write_cxr_phantoms",
    "write_fundus_phantoms",
]
