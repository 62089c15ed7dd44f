"""The teacher as a system of the experiment tables (evaluate.py): it scores every query's candidate set C(q) (the
reference every system's fidelity is measured against), reranks the union of the first stages' top k over the whole
pool (teacher@k), and, as a diagnostic, does the latter with each document's offset over training queries removed
(12). Every pair goes through `caches.TeacherScores`, so no pair is scored twice."""
from __future__ import annotations

from runtime.baselines import SystemResult
from runtime.caches import TeacherScores
from runtime.metrics import first_stage_union


def system_teacher(teacher, data, queries: dict[str, str], cands: dict[str, list[str]],
                   scores: TeacherScores | None = None) -> SystemResult:
    """The teacher scores every (query, document in C(q)) jointly (1)-(3): the reference every system is held to."""
    run, dt = (scores or TeacherScores()).run(teacher, queries, cands, data.doc_text)
    return SystemResult(run, 1000 * dt / max(1, len(queries)), None, "scores C(q) jointly")


def system_teacher_at_k(teacher, data, queries: dict[str, str], first: dict[str, SystemResult], k: int,
                        scores: TeacherScores | None = None) -> SystemResult:
    """teacher@k, the teacher's whole-pool reference: it reranks, jointly (1)-(3), the union of the top k documents
    of each first-stage system in `first` over the whole pool (k = 0: every document of the pool, |pool| teacher
    calls per query). Documents outside the union are not retrieved."""
    qids = list(queries)
    if k == 0:
        union = {q: list(data.corpus) for q in qids}
        note = f"reranks the whole pool ({len(data.corpus)} documents)"
    else:
        missing = [n for n, r in first.items() if r.full_run is None]
        if missing or not first:
            raise ValueError(f"teacher@{k}: first-stage systems {missing or '(none)'} have no whole-pool run")
        union = first_stage_union([r.full_run for r in first.values()], qids, k)
        note = f"reranks the union of the top {k} of {' and '.join(first)}"
    run, dt = (scores or TeacherScores()).run(teacher, queries, union, data.doc_text, f"teacher@{k or 'pool'}")
    return SystemResult(None, 1000 * dt / max(1, len(qids)), None, note, run)


def system_teacher_centered(teacher, data, at_k: SystemResult, reference: dict[str, str],
                            scores: TeacherScores) -> SystemResult:
    """(12) applied to the teacher [ours, a diagnostic]: teacher@k's scores with each document's offset removed,
    s_T(q, d) - mean_{q' in Q} s_T(q', d), over `reference` queries Q (training queries), which the teacher scores
    against every document in teacher@k's union once (a cost per pool, not per query)."""
    docs = sorted({d for ds in at_k.full_run.values() for d in ds})
    ref, _ = scores.run(teacher, reference, {q: docs for q in reference}, data.doc_text, "teacher (12): offsets")
    offset = {d: sum(ref[q][d] for q in ref) / len(ref) for d in docs}
    run = {q: {d: s - offset[d] for d, s in ds.items()} for q, ds in at_k.full_run.items()}
    return SystemResult(None, at_k.ms_per_query, None, f"{at_k.note}, each document's mean s_T over {len(ref)} "
                        "training queries removed (12)", run)
