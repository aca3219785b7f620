"""The DICOM receiver: a C-STORE SCP (pynetdicom) that de-identifies and stores instances as
they arrive (``medfed site receive``).

Only senders whose calling AE title is on the site's allow-list (``[receiver]
allowed_ae_titles`` in site.toml) may associate; any other association request is rejected
(A-ASSOCIATE-RJ: rejected-permanent, service-user, "calling AE title not recognised"). An
empty allow-list is refused at start: it never means "accept all". The receiver accepts
every storage SOP class pynetdicom knows, in every transfer syntax it knows (compressed ones
are kept as they came), and Verification (C-ECHO).

Each instance goes through the same intake as ingest (`site_client.intake`): usable ones are
stored under their case id and recorded in the received index (`site_client.received`)
until ``medfed site label`` labels them; an instance whose case the store holds already is
counted and left; anything else goes to the encrypted quarantine as it arrived (a Part 10
file) with its reason, under the source ``<calling AE title>/<n>`` (never its UID). In all
three cases the C-STORE answer is Success (0x0000): the instance is in the site's custody
and accounted for. When keeping it fails (disk full, encryption error) the answer is
Refused: Out of Resources (0xA700), so that the sender keeps it and tries again, and the
session counts it as failed: ``received == stored + already_stored + quarantined + failed``.

A session is the receiver's lifetime. Its intake report (counts only) is written when it
starts, again whenever an association ends (so that a killed receiver loses no counts), and
when it stops, always to the same file. pynetdicom serves each association in its own
thread; one lock serialises the intake of instances and the writes of the store, the
index, the quarantine and the report.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from site_client.decode import DecodeError, DecodeProblem, UnusableInput, one_line
from site_client.intake import InstanceIntake, IntakenImage
from site_client.intake_report import IntakeReport
from site_client.policy import ReceiverPolicy
from site_client.quarantine import StoreQuarantine
from site_client.received import ReceivedCase, ReceivedIndex
from site_client.store import SiteStore

#: C-STORE response statuses (PS3.4 Table B.2-1).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700

#: The source `InstanceIntake.case_id` is told for every instance: a SOP Instance UID that
#: arrives again is the same instance sent again (a retry, a study sent twice), which is
#: "already stored", not a conflicting second file as it is within a folder.
_NETWORK = "network"


class ReceiverError(RuntimeError):
    """The receiver cannot start (no allow-list, address in use); a one-line reason."""


def check_settings(settings: ReceiverPolicy) -> None:
    """Raise `ReceiverError` when ``settings`` would let nobody send (empty allow-list)."""
    if not settings.allowed_ae_titles:
        raise ReceiverError(
            "no sender is allowed: list the AE titles that may send in SITE/site.toml, "
            '[receiver] allowed_ae_titles = ["PACS"], or name them with --allow AE'
        )


@dataclass
class ReceiveReport(IntakeReport):
    """A receive session's `IntakeReport` (kind ``receive``), and ``path``: the file it is
    written to."""

    path: Path | None = None


class _Outcome(Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    QUARANTINED = "quarantined"
    FAILED = "failed"


@dataclass
class AssociationCounts:
    """What one association sent: its calling AE title and its instances by outcome."""

    calling_ae: str
    stored: int = 0
    already_stored: int = 0
    quarantined: int = 0
    failed: int = 0

    @property
    def instances(self) -> int:
        return self.stored + self.already_stored + self.quarantined + self.failed

    def count(self, outcome: _Outcome) -> None:
        name = outcome.name.lower()
        setattr(self, name, getattr(self, name) + 1)

    def summary(self) -> str:
        """One line of counts (no UIDs, no names)."""
        return (
            f"{self.instances} instances: {self.stored} stored, {self.already_stored} "
            f"already stored, {self.quarantined} quarantined, {self.failed} failed"
        )


class Receiver:
    """A C-STORE SCP for ``store`` with ``settings`` (see the module docstring).

    ``say`` receives one line per event worth telling the operator (listening, each
    association's end or rejection); none holds patient data or UIDs. `start` listens in
    background threads, `stop` ends the session and returns its report.
    """

    def __init__(
        self,
        store: SiteStore,
        settings: ReceiverPolicy,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        check_settings(settings)
        self.store = store
        self.settings = settings
        self.say = say
        self.index = ReceivedIndex(store)
        known = {r.case_id for r in store.read_manifest()} | set(self.index.cases())
        self.intake = InstanceIntake(store, known)
        self.quarantine = StoreQuarantine(store)
        self.report = ReceiveReport("receive", self.intake.deidentifier.method())
        self._lock = threading.Lock()
        self._associations: dict[Association, AssociationCounts] = {}
        self._server: Any = None
        self._ae = self._application_entity()

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.require_calling_aet = list(self.settings.allowed_ae_titles)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the receiver listens on, once started."""
        host, port = self._server.server_address[:2]
        return host, port

    def start(self) -> None:
        """Write the session's first report and listen (in background threads). Raises
        `ReceiverError` when the address cannot be bound."""
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        address = (self.settings.bind, self.settings.port)
        try:
            self._server = self._ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ReceiverError(
                f"cannot listen on {address[0]}:{address[1]} ({exc.strerror or exc})"
            ) from exc
        with self._lock:
            self.report.path = self.report.write(self.store.intake_reports_dir)
        host, port = self.address
        allowed = ", ".join(self.settings.allowed_ae_titles)
        self.say(
            f"site {self.store.site_id}: receiving as {self.settings.ae_title} on "
            f"{host}:{port}, from {allowed}"
        )

    def stop(self) -> ReceiveReport:
        """Stop listening (aborting associations still open), write the session's final
        report and return it."""
        if self._server is not None:
            self._ae.shutdown()
            self._server = None
        with self._lock:
            self._write_report()
        return self.report

    def _write_report(self) -> None:
        """(Re)write the session's report file, finished now; the caller holds the lock."""
        if self.report.path is not None:
            self.report.finished = ""
            self.report.write_to(self.report.path)

    # Handlers: pynetdicom calls them in each association's own thread.

    def _on_store(self, event: evt.Event) -> int:
        calling_ae = event.assoc.requestor.ae_title
        with self._lock:
            counts = self._associations.setdefault(event.assoc, AssociationCounts(calling_ae))
            self.report.received += 1
            source = f"{calling_ae}/{self.report.received}"
            try:
                outcome = self._take(event, source)
            except Exception:  # keeping it failed: the sender keeps the instance
                outcome = _Outcome.FAILED
                self.report.failed += 1
            counts.count(outcome)
        return OUT_OF_RESOURCES if outcome is _Outcome.FAILED else SUCCESS

    def _take(self, event: evt.Event, source: str) -> _Outcome:
        """Store, skip or quarantine the instance of ``event``; raises only when keeping it
        fails."""
        try:
            case_id, image = self._examine(event)
        except UnusableInput as exc:
            category = str(exc.category)
            self.quarantine.add(event.encoded_dataset(), source, category, str(exc))
            self.report.count_quarantined(category)
            return _Outcome.QUARANTINED
        if image is None:
            self.report.already_stored += 1
            return _Outcome.ALREADY_STORED
        self.store.save_case(case_id, image.image)
        rows, columns = image.image.shape
        self.index.add(
            ReceivedCase(
                case_id,
                image.manufacturer,
                image.model,
                rows,
                columns,
                image.masked_text,
                image.acquisition,
            )
        )
        self.intake.stored_ids.add(case_id)
        self.report.stored += 1
        self.report.burned_in_masked += image.masked_text
        return _Outcome.STORED

    def _examine(self, event: evt.Event) -> tuple[str, IntakenImage | None]:
        """The case id of the instance, and its image (None when the store has the case).
        Raises `UnusableInput` for an instance that goes to quarantine."""
        try:
            ds: Dataset = event.dataset
            ds.file_meta = event.file_meta
            case_id = self.intake.case_id(ds, _NETWORK)
            if case_id in self.intake.stored_ids:
                return case_id, None
            return case_id, self.intake.image(ds, case_id)
        except UnusableInput:
            raise
        except Exception as exc:  # pydicom raises many types for damaged data sets
            raise DecodeError(DecodeProblem.UNREADABLE, one_line(exc)) from exc

    def _on_end(self, event: evt.Event) -> None:
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        with self._lock:
            counts = self._associations.pop(event.assoc, None)
            self._write_report()
        if counts is None:
            counts = AssociationCounts(event.assoc.requestor.ae_title)
        self.say(f"association from {counts.calling_ae} {how}: {counts.summary()}")

    def _on_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        answer = event.assoc.acceptor.primitive  # the A-ASSOCIATE-RJ sent
        reason = answer.reason_str if answer is not None else "no reason recorded"
        self.say(f"association from {requestor.ae_title} at {requestor.address} rejected: {reason}")


def serve(store: SiteStore, settings: ReceiverPolicy, say: Callable[[str], None]) -> ReceiveReport:
    """Run a `Receiver` until SIGINT (Ctrl-C) or SIGTERM; returns the session's report."""
    stopping = threading.Event()
    previous = {
        number: signal.signal(number, lambda *_: stopping.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    receiver = Receiver(store, settings, say)
    try:
        receiver.start()
        while not stopping.wait(1.0):
            pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        report = receiver.stop()
    return report
