"""v2 segment → FHIR mappers (HL7 v2-to-FHIR IG), one module per concept, dispatched by segment id.

Messages are mapped by segment, not by message type: every segment a message carries is handed to
its mapper in order, with the shared `MapContext` carrying the anchors (patient, encounter, order,
report, document, appointment, specimen) later segments attach to. Segments with no FHIR meaning
here (SFT, ARV, DB1, SAC, Z-segments …) are skipped without complaint.
"""

from __future__ import annotations

from collections.abc import Callable

from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import (
    account,
    clinical,
    codings,
    consent,
    coverage,
    document,
    encounter,
    header,
    observation,
    orders,
    participation,
    patient,
    pharmacy,
    scheduling,
    specimen,
    vaccination,
)
from fhir_gateway.ingest.hl7v2.mapping.context import MapContext, MapIssue

SegmentMapper = Callable[[Segment, MapContext], None]

SEGMENT_MAPPERS: dict[str, SegmentMapper] = {
    "MSH": header.map_msh,
    "PID": patient.map_pid,
    "PD1": patient.map_pd1,
    "MRG": patient.map_mrg,
    "NK1": encounter.map_nk1,
    "PV1": encounter.map_pv1,
    "PV2": encounter.map_pv2,
    "ORC": orders.map_orc,
    "OBR": orders.map_obr,
    "TQ1": orders.map_tq1,
    "OBX": observation.map_obx,
    "NTE": observation.map_nte,
    "AL1": clinical.map_al1,
    "IAM": clinical.map_iam,
    "DG1": clinical.map_dg1,
    "PR1": clinical.map_pr1,
    "PRB": clinical.map_prb,
    "IN1": coverage.map_in1,
    "IN2": coverage.map_in2,
    "GT1": account.map_gt1,
    "ROL": participation.map_rol,
    "PRT": participation.map_prt,
    "SPM": specimen.map_spm,
    "CON": consent.map_con,
    "FT1": coverage.map_ft1,
    "RXA": pharmacy.map_rxa,
    "RXO": pharmacy.map_rxo,
    "RXE": pharmacy.map_rxe,
    "RXD": pharmacy.map_rxd,
    "RXR": pharmacy.map_rxr,
    "SCH": scheduling.map_sch,
    "AIS": scheduling.map_ais,
    "AIG": scheduling.map_aig,
    "AIL": scheduling.map_ail,
    "AIP": scheduling.map_aip,
    "TXA": document.map_txa,
}

# Run once the last segment is mapped, in this order (the Provenance must see every resource).
FINISHERS: tuple[Callable[[MapContext], None], ...] = (
    orders.flush_orc,
    document.finish_document,
    scheduling.finish_appointment,
    header.finish_header,
    vaccination.finish_education,
    codings.settle_codings,  # last: every Coding the finishers wrote too
)

__all__ = ["FINISHERS", "SEGMENT_MAPPERS", "MapContext", "MapIssue", "SegmentMapper"]
