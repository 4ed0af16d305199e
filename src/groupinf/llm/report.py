"""The report of ``groupinf llm experiment``: summaries over seeds, paired differences, the skill composition
of each selection, F+I's features by skill, and the results as Markdown and a bar chart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from scipy.stats import entropy

from groupinf.features import SelectionFeatures
from groupinf.files import atomic_path

#: the row of F+I at the α that the scale study's val scores choose
VAL_CHOSEN = "F+I (α on val)"
#: the bounds reported beside the methods: the whole pool, and no fine-tuning
BOUNDS = ("Full pool", "Base")


def mean_std(values: list[float]) -> dict[str, float]:
    """``{mean, std}`` of scores over seeds (sample std; 0 for one seed)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    return {"mean": tensor.mean().item(), "std": tensor.std().item() if len(values) > 1 else 0.0}


def seed_summary(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """``{metric, mean, std, seeds}`` of results per seed."""
    return {
        "metric": next(iter(per_seed.values()))["metric"],
        **mean_std([r["score"] for r in per_seed.values()]),
        "seeds": {str(s): r["score"] for s, r in per_seed.items()},
    }


def skill_entropy(skills: list[str]) -> float:
    """Shannon entropy (bits) of the skill labels of a subset."""
    return float(entropy(list(Counter(skills).values()), base=2)) if skills else 0.0


def composition(subsets: list[list[int]], pool_records: list[dict[str, Any]]) -> dict[str, Any]:
    """Skill counts, skill entropy (bits), mislabelled and near-duplicate examples of subsets of the pool,
    each the mean over ``subsets`` (``pool_records`` as read by ``datasets``: a missing field is None)."""
    counts: Counter[str] = Counter()
    totals = {"entropy_bits": 0.0, "mislabelled": 0.0, "duplicates": 0.0}
    for indices in subsets:
        picked = [pool_records[i] for i in indices]
        skills = [r.get("skill") or "?" for r in picked]
        counts.update(skills)
        totals["entropy_bits"] += skill_entropy(skills)
        totals["mislabelled"] += sum(bool(r.get("mislabelled")) for r in picked)
        totals["duplicates"] += sum(r.get("duplicate_of") is not None for r in picked)
    size = len(subsets)
    return {"skills": {s: c / size for s, c in sorted(counts.items())}, **{k: v / size for k, v in totals.items()}}


def feature_profile(features: SelectionFeatures, skills: list[str], alpha: float) -> dict[str, dict[str, float]]:
    """Per skill of the pool (``skills[c]`` of candidate ``c``): the candidates' ``count``, their mean
    first-order score ``a_c`` (``first_order``: the estimated decrease of the target when ``c`` is added
    alone), their mean ``½ δ_cᵀ H_f δ_c`` (``self_interaction``), and the share of them that greedy's score
    predicts to help when added alone at the interaction scale ``alpha``: ``a_c > α · ½ δ_cᵀ H_f δ_c``
    (``helps_alone``; docs/math.md §4)."""
    if len(skills) != features.num_candidates:
        raise ValueError(f"{len(skills)} skill labels for {features.num_candidates} candidates")
    first_order = features.first_order.double()
    half_self = 0.5 * features.interactions.self_terms().double()
    helps = first_order > alpha * half_self
    profile = {}
    for skill in sorted(set(skills)):
        mask = torch.tensor([s == skill for s in skills])
        profile[skill] = {
            "count": int(mask.sum()),
            "first_order": first_order[mask].mean().item(),
            "self_interaction": half_self[mask].mean().item(),
            "helps_alone": helps[mask].double().mean().item(),
        }
    return profile


def paired_differences(table: dict[str, Any], reference: str = "F+I") -> dict[str, Any]:
    """``{target: {"F+I − X": {mean, std, seeds}}}``: the reference's score minus each other method's under
    the same seed (bounds and the F+I rows excluded)."""
    paired: dict[str, Any] = {}
    if reference not in table:
        return paired
    for name, cell in table[reference].items():
        for label, row in table.items():
            if label in (reference, "F+I", VAL_CHOSEN) or label in BOUNDS:
                continue
            diffs = {s: cell["seeds"][s] - row[name]["seeds"][s] for s in cell["seeds"]}
            paired.setdefault(name, {})[f"{reference} − {label}"] = {**mean_std(list(diffs.values())), "seeds": diffs}
    return paired


def markdown(document: dict[str, Any]) -> str:
    """The results (mean ± std over seeds), the paired differences, the compositions and F+I's interaction
    scale per target."""
    table = document["results"]
    targets = list(next(iter(table.values())))
    metrics = {t: next(iter(table.values()))[t]["metric"] for t in targets}
    lines = ["| method | " + " | ".join(f"{t} ({metrics[t]})" for t in targets) + " | mean |"]
    lines.append("|" + "---|" * (len(targets) + 2))
    for label, row in table.items():
        cells = [f"{row[t]['mean']:.1f} ± {row[t]['std']:.1f}" for t in targets]
        mean = sum(row[t]["mean"] for t in targets) / len(targets)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.1f} |")
    if document.get("paired"):
        lines += ["", "Paired by seed: F+I's score minus the other method's (mean ± std over seeds).", ""]
        pairs = list(next(iter(document["paired"].values())))
        lines += ["| difference | " + " | ".join(targets) + " |", "|" + "---|" * (len(targets) + 1)]
        for pair in pairs:
            cells = [
                f"{document['paired'][t][pair]['mean']:+.1f} ± {document['paired'][t][pair]['std']:.1f}"
                for t in targets
            ]
            lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    lines += ["", "What each row fine-tuned on (Random: the mean over its per-seed subsets): skill entropy (bits),"]
    lines += ["skill counts, mislabelled and near-duplicate examples.", ""]
    lines += ["| method | target | entropy | skills | mislabelled | duplicates |", "|---|---|---|---|---|---|"]
    for label, row in table.items():
        if label == "Base":
            continue
        for t in targets[:1] if label == "Full pool" else targets:
            cell = row[t]
            skills = ", ".join(f"{s} {c:g}" for s, c in cell["skills"].items())
            name = "(all)" if label == "Full pool" else t
            lines.append(
                f"| {label} | {name} | {cell['entropy_bits']:.2f} | {skills} | {cell['mislabelled']:g} | "
                f"{cell['duplicates']:g} |"
            )
    if document.get("interaction_scale"):
        scales = ", ".join(f"{t} {a:g}" for t, a in document["interaction_scale"].items())
        setting = document["settings"]["select"]["interaction_scale"]
        lines += ["", f"F+I's interaction scale α per target (setting: {setting}): {scales}."]
    if document.get("feature_profile"):
        lines += ["", "F+I's features by skill of the pool, per target: mean first-order score a_c (the estimated"]
        lines += ["decrease of the target when c is added alone), mean ½δ_cᵀH_fδ_c, and the share of the skill's"]
        lines += ["candidates with a_c > α·½δ_cᵀH_fδ_c at select's α (predicted to help when added alone).", ""]
        lines += ["| target | skill | count | a_c | ½δ_cᵀH_fδ_c | helps alone |", "|---|---|---|---|---|---|"]
        for name, profile in document["feature_profile"].items():
            for skill, row in profile.items():
                lines.append(
                    f"| {name} | {skill} | {row['count']} | {row['first_order']:+.4f} | "
                    f"{row['self_interaction']:.4f} | {row['helps_alone']:.2f} |"
                )
    if document.get("scale_study"):
        lines += ["", "F+I at fixed α (mean ± std over seeds), scored on val and on eval; marked: the α that"]
        lines += [f"select chose, and the best on val (the row {VAL_CHOSEN}).", ""]
        lines += ["| target | α | val | eval |", "|---|---|---|---|"]
        for name, entry in document["scale_study"].items():
            for alpha, row in entry["scales"].items():
                candidates = (("select", entry["chosen"]), ("val-best", entry["val_best"]))
                marks = [mark for mark, value in candidates if value == float(alpha)]
                cells = " | ".join(f"{row[split]['mean']:.1f} ± {row[split]['std']:.1f}" for split in ("val", "eval"))
                label = f"{alpha} ({', '.join(marks)})" if marks else alpha
                lines.append(f"| {name} | {label} | {cells} |")
    return "\n".join(lines) + "\n"


def bar_chart(table: dict[str, Any], path: Path) -> None:
    """Grouped bars (targets × rows) with the std over seeds as error bars, saved as PNG."""
    from matplotlib.figure import Figure

    labels = list(table)
    targets = list(table[labels[0]])
    figure = Figure(figsize=(2.2 + 1.9 * len(targets), 3.6))
    axes = figure.add_subplot()
    width = 0.8 / len(labels)
    for m, label in enumerate(labels):
        xs = [t + (m - (len(labels) - 1) / 2) * width for t in range(len(targets))]
        axes.bar(
            xs,
            [table[label][t]["mean"] for t in targets],
            width,
            yerr=[table[label][t]["std"] for t in targets],
            label=label,
            capsize=2,
            hatch="//" if label in BOUNDS else None,
        )
    axes.set_xticks(range(len(targets)), [f"{t}\n({table[labels[0]][t]['metric']})" for t in targets])
    axes.set_ylabel("score (%)")
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
