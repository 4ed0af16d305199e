"""LoGra-projected per-example gradients and the curvature fit on a tiny random Llama: groupinf against its peers.

    make bench-llm        # = python -m benchmarks.llm_vs_peers --peers-python .venv-bench/bin/python

One random-initialised Hugging Face ``LlamaForCausalLM`` (``--layers`` blocks, ``--hidden`` wide), ``--examples``
random token sequences of ``--seq`` tokens (no padding, every token a label: the per-example loss is the
summed next-token NLL), the same 7 Linear modules of every block projected to ``r × r`` (``--r``) in every
library, ``--batch-size`` sequences per pass, float32, ``--threads`` threads. Each library runs in its own
process; the peers in ``--peers-python`` (``.venv-bench``, which the project's ``.venv`` never sees):

- ``groupinf``: ``compute_shard`` + ``GradientStore.write_shard`` per shard (what ``groupinf llm extract`` does
  after tokenising), then ``fit_curvature("ekfac", StoredGradients(store), "heuristic")``.
- ``dattri``: dattri 0.3.0's ``LoGraAttributor`` (``proj_dim = r²``: its factorised projection is ``r × r``),
  in-memory offload; extraction is ``cache`` with the identity Hessian, the fit its ``eFIM`` preconditioners
  (a dense ``r² × r²`` Fisher per layer and its inverse).
- ``dattri_llm``: dattri-llm 0.1.0's ``EKFACAttributor.cache`` with a materialised ``"logra"`` capture of
  ``proj_dim = r`` per factor (the projected covariances collected in the same pass, gradients to disk), then
  its ``fit`` (eigenbases and the corrected eigenvalues from the store).
- ``logix``: LogIX 0.1.1 (the LoGra paper's library; its wheel says Python < 3.11, ``make`` installs it with
  ``--ignore-requires-python``): ``watch`` the same modules, ``add_lora`` with random init and rank ``r`` (an
  ``r × d_in`` encoder, a zero ``r × r`` bottleneck, a ``d_out × r`` decoder per layer), then one pass logging the
  bottlenecks' per-example gradients (``{"grad": ["log"]}``, written to disk at ``finalize``) with the projected
  forward and backward covariances; the fit is its ``covariance_svd`` (K-FAC eigenbases, no eigenvalue correction).
- ``kronfluence``: Kronfluence 1.0.1's EK-FAC fit on the same modules, unprojected (it has no LoGra), for scale,
  on the first ``--kronfluence-examples`` sequences (its time per sequence is reported too).
- ``forward_backward``: the physical limit, a plain training forward and backward pass (all parameter
  gradients) over the same batches; ``activations_only``: the same with the backward stopped at the token
  embeddings' output and no parameter gradient, the least any extraction of every layer's output gradients
  does.

Every worker warms up on one batch, then times; the libraries run in turn ``--repeats`` times and the best
time of each is kept. Memory is each process's peak resident set (``VmHWM``), in total and above its
resident set once the model and data are loaded, taken after the extraction and after the fit (before the
untimed agreement work). Agreement, where the quantity is the same: each peer's projection matrices are
recovered (dattri, dattri-llm: by projecting identity matrices through its own projector; LogIX: its encoder
and decoder weights), groupinf recomputes with them, and the driver compares dattri's and LogIX's per-example
projected gradients (first ``--queries`` examples) and dattri-llm's EK-FAC influence scores (``--queries`` extra
sequences against the pool; its damping relative, ``0.1 × mean(Λ)`` per layer like groupinf's heuristic) with
groupinf's.

Writes ``--out`` (JSON): every time and memory figure, ``ratio_to_fastest_peer`` (groupinf's extraction time
over the fastest peer's, equal projection size), ``fastest_peer``, ``ratio_to_forward_backward`` and the
agreement figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: the projected modules of every block
LAYERS = r"\.(q|k|v|o|gate|up|down)_proj$"
#: the peers that extract LoGra-projected gradients (the extraction's comparison), and of those the ones whose
#: per-example gradients are compared with groupinf's (dattri-llm's EK-FAC scores are compared instead)
LOGRA_PEERS = ("dattri", "dattri_llm", "logix")
GRADIENT_PEERS = ("dattri", "logix")
PEERS = (*LOGRA_PEERS, "kronfluence")
LIBRARIES = ("forward_backward", "activations_only", "groupinf", *PEERS)
PEER_PACKAGES = {"dattri": "dattri", "dattri_llm": "dattri-llm", "logix": "logix-ai", "kronfluence": "kronfluence"}
PEER_MODULES = {
    "dattri": "dattri.algorithm.logra",
    "dattri_llm": "dattri_llm",
    "logix": "logix",
    "kronfluence": "kronfluence",
}


# --------------------------------------------------------------------------------------------- helpers


def memory() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed next-token NLL ``(B,)`` (every token is a label)."""
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    nll = torch.nn.functional.cross_entropy(shifted, input_ids[:, 1:].reshape(-1), reduction="none")
    return nll.view(len(input_ids), -1).sum(1)


class Sequences(torch.utils.data.Dataset):
    """``{"input_ids": (T,)}`` items of a ``(N, T)`` tensor (dattri, dattri-llm and Kronfluence take datasets)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index]}


def load(work: Path):
    """The saved model (float32, eval mode), the pool and query token ids, the settings and the layer names."""
    import re

    from transformers import AutoModelForCausalLM

    settings = json.loads((work / "settings.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32).eval()
    data = torch.load(work / "data.pt")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.search(LAYERS, n)]
    return model, data["pool"], data["queries"], settings, names


def identity_projection(project, dim: int) -> torch.Tensor:
    """The ``(r, dim)`` matrix ``P`` of a linear map ``x ↦ P x`` applied to row vectors: ``project(I)ᵀ``."""
    return project(torch.eye(dim)).T.contiguous()


# --------------------------------------------------------------------------------------------- workers


def run_forward_backward(work: Path, settings: dict, timed: bool, parameters: bool = True) -> dict[str, Any]:
    """A plain training pass: forward, backward to every parameter, over the pool in batches. Without
    ``parameters``: the backward to the token embeddings' output only (every layer's output gradient, no
    parameter gradient), the least any extraction of every layer's per-example gradients can do."""
    model, pool, _, settings, _ = load(work)
    model.requires_grad_(parameters)
    batch = settings["batch_size"]
    roots: list[torch.Tensor] = []
    if not parameters:
        embed = model.get_input_embeddings()
        embed.register_forward_hook(
            lambda module, args, out: roots.append(out.detach().requires_grad_(True)) or roots[-1]
        )

    def passes(ids: torch.Tensor) -> None:
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            loss = sequence_nll(model(input_ids=chunk).logits, chunk).sum()
            if parameters:
                loss.backward()
                model.zero_grad(set_to_none=True)
            else:
                torch.autograd.grad(loss, roots.pop())

    passes(pool[:batch])
    before = memory()
    start = time.perf_counter()
    passes(pool)
    seconds, peak = time.perf_counter() - start, memory()["VmHWM"]
    return {"extract_s": seconds, "rss_before_mib": before["VmRSS"], "rss_peak_extract_mib": peak}


def run_activations_only(work: Path, settings: dict, timed: bool) -> dict[str, Any]:
    return run_forward_backward(work, settings, timed, parameters=False)


def groupinf_projector(model, names: list[str], settings: dict, matrices: dict | None):
    """groupinf's projector of ``names``, its own seeded Gaussian matrices or ``matrices[name] = (P_o, P_i)``."""
    from groupinf.llm.models import linear_layers
    from groupinf.llm.projection import Projector

    r = settings["r"]
    projector = Projector(model, linear_layers(model, LAYERS), "gaussian", r, r, seed=0)
    assert [s.name for s in projector.specs] == names
    if matrices is not None:
        for name, (p_out, p_in) in matrices.items():
            projector.p_out[name], projector.p_in[name] = p_out, p_in
    return projector


def groupinf_extract(projector, ids: torch.Tensor, settings: dict, path: Path):
    """The store of ``ids`` at ``path``: per shard ``compute_shard`` then ``write_shard`` (float32)."""
    from groupinf.llm.config import ExtractConfig
    from groupinf.llm.data import Encoded
    from groupinf.llm.extract import compute_shard
    from groupinf.llm.store import GradientStore, StoreSpec

    r, batch = settings["r"], settings["batch_size"]
    config = ExtractConfig(r_in=r, r_out=r, batch_size=batch, fisher="empirical")
    spec = StoreSpec(len(ids), config.shard_size, "float32", "empirical", tuple(projector.specs))
    store = GradientStore.prepare(path, spec)
    for shard in range(spec.num_shards):
        begin, end = spec.rows(shard)
        examples = [Encoded(row.tolist(), row.tolist()) for row in ids[begin:end]]
        arrays, moments = compute_shard(projector, examples, begin, config, 0, torch.device("cpu"))
        store.write_shard(shard, arrays, moments, {"ids": list(range(begin, end))})
    return store


def groupinf_scores(projector, pool: torch.Tensor, queries: torch.Tensor, settings: dict, root: Path) -> torch.Tensor:
    """EK-FAC influence scores ``(N, Q)``, ``g_iᵀ (H + ρI)⁻¹ q_j`` with the heuristic damping, in float64."""
    from groupinf.curvature import fit_curvature
    from groupinf.llm.curvature import StoredGradients

    pool_store = groupinf_extract(projector, pool, settings, root / "pool")
    query_store = groupinf_extract(projector, queries, settings, root / "queries")
    curvature = fit_curvature("ekfac", StoredGradients(pool_store), "heuristic")
    return pool_store.read().double() @ curvature.solve(query_store.read().double()).T


def run_groupinf(work: Path, settings: dict, timed: bool) -> dict[str, Any]:
    from groupinf.curvature import fit_curvature
    from groupinf.llm.curvature import StoredGradients

    model, pool, queries, settings, names = load(work)
    projector = groupinf_projector(model, names, settings, None)
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        groupinf_extract(projector, pool[: settings["batch_size"]], settings, Path(tmp) / "warm")
        before = memory()
        start = time.perf_counter()
        store = groupinf_extract(projector, pool, settings, Path(tmp) / "store")
        extracted = time.perf_counter()
        info["rss_peak_extract_mib"] = memory()["VmHWM"]
        fit_curvature("ekfac", StoredGradients(store), "heuristic")
        info |= {"extract_s": extracted - start, "fit_s": time.perf_counter() - extracted}
        info["rss_peak_fit_mib"] = memory()["VmHWM"]
        info["rss_before_mib"] = before["VmRSS"]
    if not timed:  # agreement: recompute with each peer's projection matrices
        q = settings["queries"]
        for peer in LOGRA_PEERS:
            found = work / f"{peer}.matrices.pt"
            if not found.is_file():
                continue
            matrices = torch.load(found)
            projector = groupinf_projector(model, names, settings, matrices)
            with tempfile.TemporaryDirectory() as tmp:
                if peer in GRADIENT_PEERS:
                    grads = groupinf_extract(projector, pool[:q], settings, Path(tmp) / "g").read()
                    torch.save(grads, work / f"groupinf.{peer}_gradients.pt")
                else:
                    scores = groupinf_scores(projector, pool, queries, settings, Path(tmp))
                    torch.save(scores, work / "groupinf.dattri_llm_scores.pt")
    return info


def run_dattri(work: Path, settings: dict, timed: bool) -> dict[str, Any]:
    from dattri.algorithm.logra import LoGraAttributor
    from dattri.task import AttributionTask

    model, pool, _, settings, names = load(work)
    batch = settings["batch_size"]

    def loss_func(model, data, device="cpu"):
        ids = data["input_ids"].to(device)
        # the per-batch MEAN of the per-example losses: dattri's LoGra multiplies by the batch size
        return sequence_nll(model(input_ids=ids).logits, ids).mean()

    scratch = tempfile.TemporaryDirectory()  # dattri writes its batch metadata there (else into the cwd)

    def attributor() -> LoGraAttributor:
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
        found = LoGraAttributor(
            task, layer_names=names, hessian="eFIM", damping=1e-3, proj_dim=settings["r"] ** 2, cache_dir=scratch.name
        )
        found.hessian = "Identity"  # cache() = the extraction alone; the eFIM fit is timed on its own below
        return found

    def loader(ids: torch.Tensor):
        return torch.utils.data.DataLoader(Sequences(ids), batch_size=batch, shuffle=False)

    attributor().cache(loader(pool[:batch]))
    timed_one = attributor()
    before = memory()
    start = time.perf_counter()
    timed_one.cache(loader(pool))
    extracted = time.perf_counter()
    info = {"rss_peak_extract_mib": memory()["VmHWM"]}
    timed_one.hessian = "eFIM"
    timed_one.compute_preconditioners()
    info |= {"extract_s": extracted - start, "fit_s": time.perf_counter() - extracted}
    info["rss_peak_fit_mib"] = memory()["VmHWM"]
    info["rss_before_mib"] = before["VmRSS"]
    if not timed:
        matrices = {}
        for name, compressor in zip(names, timed_one.compressors, strict=True):
            module = dict(model.named_modules())[name]
            grad_side, input_side = compressor.sparsifier.sparsifier_comp
            matrices[name] = (
                identity_projection(lambda x, p=grad_side: p(x, ensemble_id=0), module.out_features),
                identity_projection(lambda x, p=input_side: p(x, ensemble_id=0), module.in_features),
            )
        torch.save(matrices, work / "dattri.matrices.pt")
        rows = next(iter(timed_one.offload_manager.create_gradient_dataloader(data_type="gradients", batch_size=1)))[0]
        torch.save(rows[: settings["queries"]].float().cpu(), work / "dattri.gradients.pt")
    return info


def run_dattri_llm(work: Path, settings: dict, timed: bool) -> dict[str, Any]:
    from dattri_llm.attribution.algorithm.kronecker import EKFACAttributor
    from dattri_llm.attribution.arguments import AttributionArguments
    from dattri_llm.gradient.hooks import HookManagerConfig
    from dattri_llm.task import AttributionTask

    model, pool, queries, settings, names = load(work)
    batch, r = settings["batch_size"], settings["r"]
    projection = {"style": "logra", "proj_dim": r, "proj_max_batch_size": 64, "proj_type": "normal", "proj_seed": 0}
    config = HookManagerConfig(
        linear_io=[f"^{n}$" for n in names],
        projection_kwargs={"__default__": projection},
        capture_style="materialized",
        include_frozen=True,
    )

    def loss_func(model, data):
        return sequence_nll(model(input_ids=data["input_ids"]).logits, data["input_ids"]).sum()

    task = AttributionTask(loss_func, model)

    def attributor(root: Path) -> EKFACAttributor:
        args = AttributionArguments(
            output_dir=str(root), per_device_train_batch_size=batch, per_device_eval_batch_size=batch
        )
        return EKFACAttributor(args, task=task)

    with tempfile.TemporaryDirectory() as tmp:
        attributor(Path(tmp) / "warm").cache(Sequences(pool[:batch]), Sequences(queries[:1]), hook_config=config)
        timed_one = attributor(Path(tmp) / "run")
        before = memory()
        start = time.perf_counter()
        [(train_dir, test_dir)] = timed_one.cache(Sequences(pool), Sequences(queries), hook_config=config)
        extracted = time.perf_counter()
        info = {"rss_peak_extract_mib": memory()["VmHWM"]}
        fisher_dir = timed_one.fit(train_dir)
        info |= {"extract_s": extracted - start, "fit_s": time.perf_counter() - extracted}
        info["rss_peak_fit_mib"] = memory()["VmHWM"]
        info["rss_before_mib"] = before["VmRSS"]
        if not timed:
            score = timed_one.attribute_from_cache(
                train_dir, test_dir, fisher_dir=fisher_dir, damping=0.1, relative_damping=True
            )
            torch.save(score.agnostic_matrix()[1].double(), work / "dattri_llm.scores.pt")
            from dattri.func.projection import random_project

            def factor(dim: int, seed: int) -> torch.Tensor:
                eye = torch.eye(dim)
                kwargs = {k: v for k, v in projection.items() if k in ("proj_max_batch_size", "proj_type")}
                return identity_projection(random_project(eye, dim, proj_dim=r, proj_seed=seed, **kwargs), dim)

            modules = dict(model.named_modules())
            matrices = {n: (factor(modules[n].out_features, 0), factor(modules[n].in_features, 1)) for n in names}
            torch.save(matrices, work / "dattri_llm.matrices.pt")
    return info


def run_logix(work: Path, settings: dict, timed: bool) -> dict[str, Any]:
    import logix
    import yaml

    model, pool, _, settings, names = load(work)
    batch, r = settings["batch_size"], settings["r"]
    with tempfile.TemporaryDirectory() as tmp:

        def extract(ids: torch.Tensor, project: str) -> logix.LogIX:
            """LogIX's LoGra (its LoRA-style encoder/bottleneck/decoder per watched layer, random init): the
            per-example gradients of the bottlenecks logged to disk, the projected covariances in the same pass."""
            config = Path(tmp) / f"{project}.yaml"
            config.write_text(yaml.safe_dump({"root_dir": tmp, "lora": {"init": "random", "rank": r}}))
            run = logix.LogIX(project, config=str(config))
            run.watch(model, name_filter=names)
            run.add_lora()
            run.setup({"grad": ["log"], "forward": ["covariance"], "backward": ["covariance"]})
            run.save(True)
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                with run(data_id=[str(start + i) for i in range(len(chunk))]):
                    model.zero_grad(set_to_none=True)
                    sequence_nll(model(input_ids=chunk).logits, chunk).sum().backward()
            run.finalize()
            return run

        def unwrap() -> None:
            """The model as loaded: each LoRA-wrapped layer replaced by the layer it wraps."""
            for name in names:
                parent, _, child = name.rpartition(".")
                owner = model.get_submodule(parent)
                setattr(owner, child, getattr(owner, child)._linear)

        extract(pool[:batch], "warm")
        unwrap()
        before = memory()
        start = time.perf_counter()
        run = extract(pool, "run")
        extracted = time.perf_counter()
        info = {"rss_peak_extract_mib": memory()["VmHWM"]}
        run.state.covariance_svd()  # its K-FAC eigenbases of the projected covariances (no eigenvalue correction)
        info |= {"extract_s": extracted - start, "fit_s": time.perf_counter() - extracted}
        info["rss_peak_fit_mib"] = memory()["VmHWM"]
        info["rss_before_mib"] = before["VmRSS"]
        if not timed:  # one batch of the pool, logged in memory, and the projection matrices that made it
            if settings["queries"] > batch:
                raise ValueError("the LogIX agreement logs one batch: --queries must be at most --batch-size")
            unwrap()
            run = extract(pool[: settings["queries"]], "agreement")
            modules = dict(model.named_modules())
            matrices = {
                n: (
                    modules[n].logix_lora_C.weight.detach().T.contiguous(),
                    modules[n].logix_lora_A.weight.detach().clone(),
                )
                for n in names
            }
            torch.save(matrices, work / "logix.matrices.pt")
            rows = [run.binfo.log[f"{n}.logix_lora_B"]["grad"].flatten(1) for n in names]
            torch.save(torch.cat(rows, dim=1).float(), work / "logix.gradients.pt")
    return info


def run_kronfluence(work: Path, settings: dict, timed: bool) -> dict[str, Any]:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.task import Task

    from benchmarks import _kronfluence

    model, pool, _, settings, names = load(work)

    class Language(Task):
        def compute_train_loss(self, batch, model, sample=False):
            ids = batch["input_ids"]
            logits = model(input_ids=ids).logits
            if sample:
                raise NotImplementedError("the empirical Fisher only")
            return sequence_nll(logits, ids).sum()

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return names

    task = Language()
    model = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=tmp)
        _kronfluence.fit_ekfac(analyzer, Sequences(pool[: settings["batch_size"]]), settings["batch_size"], name="warm")
        before = memory()
        start = time.perf_counter()
        examples = settings["kronfluence_examples"]
        stages = _kronfluence.fit_ekfac(analyzer, Sequences(pool[:examples]), settings["batch_size"])
        info = {"fit_s": time.perf_counter() - start, "stages_s": stages, "rss_before_mib": before["VmRSS"]}
        info["rss_peak_fit_mib"] = memory()["VmHWM"]
        info |= {"examples": examples, "fit_s_per_example": info["fit_s"] / examples}
    return info


WORKERS = {
    "forward_backward": run_forward_backward,
    "activations_only": run_activations_only,
    "groupinf": run_groupinf,
    "dattri": run_dattri,
    "dattri_llm": run_dattri_llm,
    "logix": run_logix,
    "kronfluence": run_kronfluence,
}


def worker(library: str, work: Path, timed: bool) -> None:
    settings = json.loads((work / "settings.json").read_text())
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)
    info = WORKERS[library](work, settings, timed)
    info["rss_peak_mib"] = memory()["VmHWM"]
    (work / f"{library}.json").write_text(json.dumps(info))


# --------------------------------------------------------------------------------------------- driver


def setup(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The random model (saved in the Hugging Face format) and the token ids of the pool and the queries."""
    from groupinf.llm.tiny import tiny_llama

    model = tiny_llama(
        args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.hidden // 64,
        num_kv_heads=args.hidden // 64,
        intermediate_size=args.intermediate,
        max_positions=args.seq,
    )
    model.save_pretrained(work / "model")
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(3, args.vocab, (args.examples, args.seq), generator=gen)
    queries = torch.randint(3, args.vocab, (args.queries, args.seq), generator=gen)
    torch.save({"pool": pool, "queries": queries}, work / "data.pt")
    settings = {
        "examples": args.examples,
        "queries": args.queries,
        "kronfluence_examples": min(args.kronfluence_examples, args.examples),
        "seq": args.seq,
        "batch_size": args.batch_size,
        "r": args.r,
        "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate, "vocab": args.vocab},
    }
    (work / "settings.json").write_text(json.dumps(settings))
    return settings


def available(python: str, library: str) -> str | None:
    """``None`` when ``library`` imports under ``python``, else the error it prints."""
    module = PEER_MODULES[library]
    found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    return None if found.returncode == 0 else (found.stderr.strip().splitlines() or ["(no message)"])[-1]


def run_worker(python: str, library: str, work: Path, timed: bool) -> dict[str, Any] | str:
    """The worker's figures, or the last line of its error."""
    env = os.environ.copy()
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, str(Path(root) / "src"), env.get("PYTHONPATH"))))
    command = [python, "-m", "benchmarks.llm_vs_peers", "--worker", library, "--workdir", str(work)]
    done = subprocess.run([*command, *([] if timed else ["--agreement"])], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["(no message)"])[-1]
    return json.loads((work / f"{library}.json").read_text())


def agreement(work: Path) -> dict[str, Any]:
    """dattri's and LogIX's gradients and dattri-llm's EK-FAC scores against groupinf's with the same projection
    matrices."""
    from scipy.stats import pearsonr, spearmanr

    out: dict[str, Any] = {}
    for peer in GRADIENT_PEERS:
        theirs, ours = work / f"{peer}.gradients.pt", work / f"groupinf.{peer}_gradients.pt"
        if theirs.is_file() and ours.is_file():
            a, b = torch.load(theirs).double(), torch.load(ours).double()
            out[f"{peer}_gradients_relative_difference"] = ((a - b).norm() / b.norm()).item()
    theirs, ours = work / "dattri_llm.scores.pt", work / "groupinf.dattri_llm_scores.pt"
    if theirs.is_file() and ours.is_file():
        a, b = torch.load(theirs).flatten().numpy(), torch.load(ours).flatten().numpy()
        out["dattri_llm_scores_spearman"] = float(spearmanr(a, b).statistic)
        out["dattri_llm_scores_pearson"] = float(pearsonr(a, b).statistic)
        out["dattri_llm_scores_relative_difference"] = float(((a - b) ** 2).sum() ** 0.5 / (b**2).sum() ** 0.5)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--kronfluence-examples", type=int, default=512, help="its unprojected fit is slow: a prefix")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--r", type=int, default=16, help="LoGra projection r_in = r_out per layer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peers-python", default=sys.executable, help="the interpreter with the peers installed")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/llm_vs_peers.json"))
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--agreement", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.workdir, not args.agreement)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = setup(work, args)
        pythons = {name: sys.executable for name in ("forward_backward", "activations_only", "groupinf")}
        errors = {}
        for peer in PEERS:
            error = available(args.peers_python, peer)
            if error is None:
                pythons[peer] = args.peers_python
            else:
                errors[peer] = f"{PEER_PACKAGES[peer]} not importable under {args.peers_python}: {error}"
        load_before = os.getloadavg()
        figures: dict[str, list[dict[str, Any]]] = {}
        # the peers first: the last, untimed-agreement groupinf run reads their projection matrices
        order = [name for name in (*PEERS, "forward_backward", "activations_only", "groupinf") if name in pythons]
        for repeat in range(args.repeats):
            for name in order:
                last = repeat == args.repeats - 1
                result = run_worker(pythons[name], name, work, timed=not (last and name in ("groupinf", *PEERS)))
                if isinstance(result, str):
                    errors[name] = result
                    continue
                figures.setdefault(name, []).append(result)
                print(f"{name:16s} {json.dumps(result)}", flush=True)
        agree = agreement(work)
    report = summarise(settings, figures, errors, agree, load_before, os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"wrote {args.out}")


def summarise(settings, figures, errors, agree, load_before, load_after) -> dict[str, Any]:
    """The best run of each library, the ratios the goals are stated in, and how the run was made."""
    best = {name: min(runs, key=lambda run: run.get("extract_s", run.get("fit_s"))) for name, runs in figures.items()}
    extraction = {name: run["extract_s"] + run.get("fit_s", 0.0) for name, run in best.items() if "extract_s" in run}
    peers = {name: best[name]["extract_s"] for name in LOGRA_PEERS if name in best}
    report: dict[str, Any] = {
        "settings": settings,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "libraries": best,
        "all_runs": figures,
        "errors": errors,
        "agreement": agree,
        "extract_plus_fit_s": extraction,
    }
    if "groupinf" in best:
        ours = best["groupinf"]["extract_s"]
        if peers:
            fastest = min(peers, key=peers.get)
            report["fastest_peer"] = fastest
            report["ratio_to_fastest_peer"] = ours / peers[fastest]
            report["ratio_to_peers"] = {name: ours / seconds for name, seconds in peers.items()}
        if "forward_backward" in best:
            report["ratio_to_forward_backward"] = ours / best["forward_backward"]["extract_s"]
        if "activations_only" in best:
            report["ratio_to_activations_only"] = ours / best["activations_only"]["extract_s"]
            report["peers_to_activations_only"] = {
                name: seconds / best["activations_only"]["extract_s"] for name, seconds in peers.items()
            }
    return report


def print_report(report: dict[str, Any]) -> None:
    s, model = report["settings"], report["settings"]["model"]
    print(
        f"Llama {model['layers']} blocks, hidden {model['hidden']} ({s['parameters'] / 1e6:.1f} M parameters), "
        f"{s['examples']} sequences of {s['seq']} tokens, batch {s['batch_size']}, LoGra {s['r']}x{s['r']} on "
        f"{7 * model['layers']} Linear layers, {s['threads']} threads; "
        f"load {report['machine']['load_average_before'][0]:.1f}"
    )
    print("peak memory: MiB above the process once model and data are loaded, after extraction / after the fit")
    print(f"{'library':18s} {'extract s':>10s} {'fit s':>8s} {'MiB extract':>12s} {'MiB fit':>8s}")
    for name, run in report["libraries"].items():
        extract = f"{run['extract_s']:.2f}" if "extract_s" in run else "-"
        fit = f"{run['fit_s']:.2f}" if "fit_s" in run else "-"
        during = f"{run['rss_peak_extract_mib'] - run['rss_before_mib']:.0f}" if "rss_peak_extract_mib" in run else "-"
        after = f"{run['rss_peak_fit_mib'] - run['rss_before_mib']:.0f}" if "rss_peak_fit_mib" in run else "-"
        print(f"{name:18s} {extract:>10s} {fit:>8s} {during:>12s} {after:>8s}")
    for name, error in report["errors"].items():
        print(f"{name}: FAILED: {error}")
    keys = ("fastest_peer", "ratio_to_fastest_peer", "ratio_to_forward_backward", "ratio_to_activations_only")
    for key in (*keys, "peers_to_activations_only", "agreement"):
        if key in report:
            print(f"{key}: {report[key]}")


if __name__ == "__main__":
    main(sys.argv[1:])
