"""Delivery: each case's AI result for the hospital's own systems (``medfed site deliver``).

Runs at the site, inside the hospital, and writes only under the folder it is given: never
into a run directory, never over the wire (it is no Flower message). For every chosen case
of the site store it scores the image with a frozen model (`results`), decides at the
operating threshold and says how confident the decision is, then writes

- a FHIR R4 transaction Bundle (`fhir`): DiagnosticReport, two Observations (the score and
  the finding), the Device that is the model (named by its checkpoint's SHA-256) and a
  Provenance, validated with fhir.resources before it is written;
- optionally a DICOM Comprehensive 3D SR and a secondary-capture overlay (`dicom`) for the
  PACS, which need the hospital's study identifiers from a link file (`linkage`).

The store is de-identified: a case is known by its keyed pseudonym only. Results name the
hospital's patient and study only where the site is given them, at delivery time, in a link
file keyed by the original SOP Instance UID (as ``medfed site label`` is); otherwise they
carry the pseudonymous case id under an identifier system the site configures.
"""


class DeliveryError(ValueError):
    """Delivery cannot go ahead: a one-line reason naming the file or field at fault."""
