"""Compile the official R4 Patient CompartmentDefinition into fhir_gateway/profiles/compartment-patient.json.

    python tools/compile_compartment.py [--source ../shared/fhir-r4]

The output maps each resource type that can belong to a patient's compartment to the search
parameters that put it there (e.g. "Observation": ["subject", "performer"]); types the definition
lists without parameters are left out, because no resource of those types is ever in the
compartment. Generated: do not edit the output by hand.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "fhir_gateway" / "profiles" / "compartment-patient.json"


def compile_compartment(definition: dict[str, Any]) -> dict[str, Any]:
    members = {r["code"]: sorted(r["param"]) for r in definition.get("resource", []) if r.get("param")}
    return {
        "generated_from": f"{definition['url']} (FHIR {definition.get('version', 'R4')})",
        "members": dict(sorted(members.items())),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "fhir-r4")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    with gzip.open(args.source / "compartmentdefinition-patient.json.gz", "rt", encoding="utf-8") as fh:
        compiled = compile_compartment(json.load(fh))
    args.output.write_text(json.dumps(compiled, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"{args.output}: {len(compiled['members'])} resource types")


if __name__ == "__main__":
    main()
