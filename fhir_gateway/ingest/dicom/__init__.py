"""DICOM in: Part 10 headers (part10), the instance blob store (blobs), the pure ImagingStudy mapping
(imaging_study), the one ingest path to `Gateway.submit` (ingest), and its three doors: STOW-RS
(stow, with the routes in api/dicomweb.py), the C-STORE SCP (scp) and files/folders (files);
WADO-RS helpers in wado."""
