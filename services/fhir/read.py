"""Reading the case as FHIR: one report, its history, searches with paging, Provenance,
the referral and the patient, and the export Bundle. Same access rules as the JSON API (a
GP's system sees that GP's cases only; another GP's case is "not found", not "forbidden")."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

from fhir.resources.bundle import Bundle
from sqlalchemy import and_, exists, func, not_, or_, select
from sqlalchemy.orm import selectinload

from .. import permissions
from ..case_access import readable_case
from ..errors import NotFound
from ..models import Case, Prediction, Review, User
from ..runtime import Runtime
from ..vocabulary import ReviewPurpose
from . import report as rp
from . import valid
from .errors import FhirError

DEFAULT_COUNT, MAX_COUNT = 20, 100
REPORT_SEARCH = ("based-on", "subject", "status", "_lastUpdated", "_count", "_offset")
STATUSES = (rp.REGISTERED, rp.PRELIMINARY, rp.FINAL, rp.AMENDED)

_reviewed = exists().where(Review.case_id == Case.id, Review.purpose == ReviewPurpose.CLINICAL)
_amended = exists().where(Review.case_id == Case.id, Review.purpose == ReviewPurpose.CLINICAL,
                          Review.amends_id.is_not(None))
_analysed = exists().where(Prediction.case_id == Case.id)
# When the report last changed: its last review, else its analysis, else its receipt.
LAST_UPDATED = func.coalesce(Case.answered_at, Case.queued_at, Case.created_at)
STATUS_SQL = {
    rp.AMENDED: _amended,
    rp.FINAL: and_(_reviewed, not_(_amended)),
    rp.PRELIMINARY: and_(not_(_reviewed), _analysed),
    rp.REGISTERED: and_(not_(_reviewed), not_(_analysed)),
}


def _facts(rt: Runtime, user: User, case_id: str) -> rp.CaseFacts:
    with rt.read() as session:
        case = readable_case(session, user, case_id)
        return rp.load(session, case)


def read_report(rt: Runtime, user: User, case_id: str, base_url: str, version: str | None = None) -> dict:
    f = _facts(rt, user, case_id)
    versions = rp.timeline(f)
    if version is None:
        return rp.report(f, versions[-1], base_url)
    chosen = next((v for v in versions if str(v.number) == version), None)
    if chosen is None:
        raise NotFound(f"DiagnosticReport/{case_id} has no version {version} (it has 1 to {len(versions)})")
    return rp.report(f, chosen, base_url)


def history(rt: Runtime, user: User, case_id: str, base_url: str) -> dict:
    """Every version of the report, newest first (a FHIR history Bundle)."""
    f = _facts(rt, user, case_id)
    versions = rp.timeline(f)
    entries = []
    for v in reversed(versions):
        entries.append({"fullUrl": f"{base_url}fhir/DiagnosticReport/{case_id}",
                        "resource": rp.report(f, v, base_url),
                        "request": {"method": "POST" if v.number == 1 else "PUT",
                                    "url": "DiagnosticReport" if v.number == 1 else f"DiagnosticReport/{case_id}"},
                        "response": {"status": "201 Created" if v.number == 1 else "200 OK",
                                     "etag": f'W/"{v.number}"', "lastModified": rp._iso(v.at)}})
    return valid(Bundle, {"resourceType": "Bundle", "type": "history", "total": len(entries),
                             "link": [{"relation": "self",
                                       "url": f"{base_url}fhir/DiagnosticReport/{case_id}/_history"}],
                             "entry": entries})


def provenances(rt: Runtime, user: User, case_id: str) -> list[dict]:
    f = _facts(rt, user, case_id)
    return [rp.provenance(f, v) for v in rp.timeline(f)]


def read_provenance(rt: Runtime, user: User, prov_id: str) -> dict:
    case_id, _, number = prov_id.rpartition("-")
    if not case_id or not number.isdigit():
        raise NotFound(f"no Provenance/{prov_id}")
    found = [p for p in provenances(rt, user, case_id) if p["id"] == prov_id]
    if not found:
        raise NotFound(f"no Provenance/{prov_id}")
    return found[0]


def search_provenance(rt: Runtime, user: User, args: list[tuple[str, str]], base_url: str) -> dict:
    targets = [v for k, v in args if k == "target"]
    unknown = sorted({k for k, _ in args} - {"target"})
    if unknown or len(targets) != 1:
        raise FhirError("Provenance is searched by target=DiagnosticReport/<id> only"
                        + (f" (not {', '.join(unknown)})" if unknown else ""), "target", 400)
    case_id = targets[0].split("/_history")[0].removeprefix(f"{base_url}fhir/").removeprefix("DiagnosticReport/")
    try:
        items = provenances(rt, user, case_id)
    except NotFound:
        items = []
    return searchset(items, f"{base_url}fhir/Provenance", len(items), base_url, "Provenance",
                     [("target", targets[0])], 0, max(1, len(items)))


def read_service_request(rt: Runtime, user: User, case_id: str) -> dict:
    return rp.service_request(_facts(rt, user, case_id))


def read_patient(rt: Runtime, user: User, key: str) -> dict:
    permissions.require(user, permissions.READ_CASES)
    query = select(Case).where(Case.patient_key == key).order_by(Case.created_at.desc()).limit(1)
    if user.role in permissions.OWN_CASES_ONLY:
        query = query.where(Case.gp_id == user.id)
    with rt.read() as session:
        case = session.scalar(query)
        if case is None:
            raise NotFound(f"no Patient/{key}")
        return rp.patient(case)


def _when(value: str) -> tuple[str, datetime, datetime]:
    """(prefix, start, end) of a FHIR date search value: the instant or day it names."""
    prefix = value[:2] if value[:2] in ("eq", "ne", "gt", "lt", "ge", "le") else "eq"
    text = value[2:] if value[:2] == prefix and value[:2].isalpha() else value
    try:
        if len(text) == 10:
            start = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
            return prefix, start, start + timedelta(days=1)
        at = datetime.fromisoformat(text)
    except ValueError:
        raise FhirError(f"_lastUpdated={value}: not a FHIR date (e.g. ge2026-12-06 or "
                        "gt2026-12-06T10:00:00Z)", "_lastUpdated", 400) from None
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return prefix, at, at


def _whole(name: str, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise FhirError(f"{name} must be a whole number from {low} to {high}", name, 400)
    return int(value)


def search_reports(rt: Runtime, user: User, args: list[tuple[str, str]], base_url: str) -> dict:
    """DiagnosticReport?based-on=&subject=&status=&_lastUpdated=&_count=&_offset=, newest
    change first. Parameters we do not support are refused (400), not silently ignored: a
    filter an EHR believes applied but was not would return another patient's reports."""
    permissions.require(user, permissions.READ_CASES)
    unknown = sorted({k for k, _ in args} - set(REPORT_SEARCH))
    if unknown:
        raise FhirError(f"unsupported search parameter {', '.join(unknown)}; DiagnosticReport is "
                        f"searched by {', '.join(REPORT_SEARCH)}", unknown[0], 400)
    query = select(Case)
    if user.role in permissions.OWN_CASES_ONLY:
        query = query.where(Case.gp_id == user.id)
    count, offset = DEFAULT_COUNT, 0
    for name, value in args:
        if name == "based-on":
            query = query.where(Case.id == value.removeprefix(f"{base_url}fhir/").removeprefix("ServiceRequest/"))
        elif name == "subject":
            query = query.where(Case.patient_key == value.removeprefix(f"{base_url}fhir/").removeprefix("Patient/"))
        elif name == "status":
            wanted = [s.strip() for s in value.split(",")]
            bad = [s for s in wanted if s not in STATUSES]
            if bad:
                raise FhirError(f"status {', '.join(bad)}: a report here is one of {', '.join(STATUSES)}",
                                "status", 400)
            query = query.where(or_(*(STATUS_SQL[s] for s in wanted)))
        elif name == "_lastUpdated":
            prefix, start, end = _when(value)
            query = query.where({"eq": and_(LAST_UPDATED >= start, LAST_UPDATED < end) if end > start
                                 else LAST_UPDATED == start,
                                 "ne": or_(LAST_UPDATED < start, LAST_UPDATED >= end) if end > start
                                 else LAST_UPDATED != start,
                                 "gt": LAST_UPDATED >= end if end > start else LAST_UPDATED > start,
                                 "ge": LAST_UPDATED >= start, "lt": LAST_UPDATED < start,
                                 "le": LAST_UPDATED < end if end > start else LAST_UPDATED <= start}[prefix])
        elif name == "_count":
            count = _whole("_count", value, 1, MAX_COUNT)
        elif name == "_offset":
            offset = _whole("_offset", value, 0, 10_000_000)
    with rt.read() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery()))
        cases = session.scalars(query.options(selectinload(Case.images)).order_by(LAST_UPDATED.desc(), Case.id)
                                .offset(offset).limit(count)).all()
        items = [rp.report(f, None, base_url) for f in rp.load_many(session, list(cases))]
    kept = [(k, v) for k, v in args if k not in ("_count", "_offset")]
    return searchset(items, f"{base_url}fhir/DiagnosticReport", total, base_url, "DiagnosticReport", kept,
                     offset, count)


def searchset(items: list[dict], url: str, total: int, base_url: str, kind: str,
              kept: Iterable[tuple[str, str]], offset: int, count: int) -> dict:
    from urllib.parse import urlencode

    def page(at: int) -> str:
        return f"{url}?{urlencode(list(kept) + [('_count', count), ('_offset', at)])}"
    links = [{"relation": "self", "url": page(offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": page(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": page(max(0, offset - count))})
    return valid(Bundle, {
        "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
        "entry": [{"fullUrl": f"{base_url}fhir/{kind}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                  for r in items]})


def export_bundle(rt: Runtime, case_id: str, base_url: str = "") -> dict:
    """Everything an EHR would file for one case (operator's export, `dermatriage fhir
    export`): the report, its Provenance per version, the referral and the patient."""
    with rt.read() as session:
        case = session.get(Case, case_id)
        if case is None:
            raise NotFound(f"no case {case_id}")
        f = rp.load(session, case)
    resources = [rp.report(f, None, base_url), rp.service_request(f), rp.patient(f.case)]
    resources += [rp.provenance(f, v) for v in rp.timeline(f)]
    return valid(Bundle, {"resourceType": "Bundle", "type": "collection",
                             "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "entry": [{"fullUrl": f"{base_url}fhir/{r['resourceType']}/{r['id']}", "resource": r}
                                       for r in resources]})
