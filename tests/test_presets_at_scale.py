"""Both paper presets' whole chain at the paper's sizes (issue 20, item 1).

Generated datasets in the real layouts at the real image sizes (GTA5 1914x1052 with split.mat,
SYNTHIA-RAND-CITYSCAPES 1280x760 with 16-bit labels, Cityscapes 2048x1024), 4 source, 4 target
train and 1 target val image, run through

    snakemake --cores 2 --configfile <preset> config/scale_check.yaml <paths>

to the report. config/scale_check.yaml shrinks only what leaves every shape as the preset has it
(iterations, the network's width, execution settings; checked below without running anything);
<paths> names the generated data and two stand-ins for the released weight files the presets point
at: a warm-up checkpoint of the narrow network in the official layout, and SimCLR weights.

The slow tests check what the preset's sizes make: soft labels at the logit resolution of a full
target image (C x 129 x 257), hard labels with flip TTA at the full target size (1024 x 2048),
every stage evaluated on full-size target val images, the report's 4 stage rows (19 classes; 16
and mIoU-16/13 for SYNTHIA). Cost on a 2-core CPU: benchmarks/README.md ("The presets at the
paper's sizes (CI)").
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from fakes import snapshot_repo

REPO = Path(__file__).resolve().parents[1]
OVERRIDE = REPO / "config" / "scale_check.yaml"
STAGES = ["warmup", "stage1", "stage2", "stage3"]

# The paper's sizes, (W, H): what the generated images have and what the presets resize to.
GTA5_SIZE, SYNTHIA_SIZE, CITYSCAPES_SIZE = (1914, 1052), (1280, 760), (2048, 1024)
LOGITS_HW = (129, 257)  # output stride 8 on a 2048x1024 image (docs/method.md §1.1)
PRESETS = {
    "gta5_to_cityscapes": SimpleNamespace(layout="gta5", source_size=GTA5_SIZE, n_class=19),
    "synthia_to_cityscapes": SimpleNamespace(layout="synthia", source_size=SYNTHIA_SIZE, n_class=16),
}
# 4 = data.batch_size: training and the prototypes drop the last incomplete batch
N_SOURCE, N_TARGET_TRAIN, N_TARGET_VAL = 4, 4, 1

# Every key config/scale_check.yaml may change: none of them changes an image, crop, label or
# tensor shape (config/scale_check.yaml says why for each).
SHAPE_NEUTRAL = {"device", "precision", "data.num_workers", "model.base_width", "model.head_channels",
                 "stage1.iterations", "stage2.iterations", "stage3.iterations", "train.log_every",
                 "train.checkpoint_every"}
# Execution settings never in an artifact's record (config/README.md: "execution only").
EXECUTION_ONLY = {"device", "data.num_workers", "train.log_every", "train.checkpoint_every"}


def leaves(d, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def preset_file(name: str) -> Path:
    return REPO / "config" / f"{name}.yaml"


# ------------------------------------------------------------------------------- the override
@pytest.mark.parametrize("name", list(PRESETS))
def test_the_override_changes_only_what_keeps_every_shape(name):
    """The preset alone vs the preset with config/scale_check.yaml: only shape-neutral keys differ
    (sizes, resize, crops, batch size, backbone, output stride, label and evaluation settings
    stay the preset's), and the warm-up is still imported rather than trained."""
    from proda.config import resolve

    alone = dict(leaves(resolve(preset_file(name), checks="values")))
    scaled = dict(leaves(resolve(preset_file(name), OVERRIDE, checks="values")))
    changed = {k for k in alone if alone[k] != scaled[k]}
    assert changed <= SHAPE_NEUTRAL, sorted(changed - SHAPE_NEUTRAL)
    assert scaled["model.backbone"] == "resnet101" and scaled["data.target.size"] == list(CITYSCAPES_SIZE)
    assert scaled["data.source.size"] == list(PRESETS[name].source_size)
    assert scaled["warmup.checkpoint"] == alone["warmup.checkpoint"]  # the preset's import, replaced by a path
    assert max(scaled[f"{s}.iterations"] for s in STAGES[1:]) <= 2


# ------------------------------------------------------------------------------- the runs
def _snapshot(root: Path) -> Path:
    """A copy of the workflow and the package, so that edits made meanwhile cannot interfere."""
    return snapshot_repo(root)


def _stand_in_weights(folder: Path, n_class: int) -> tuple[Path, Path]:
    """The released files the presets name, made for the narrow network of the override.

    * the warm-up checkpoint: a freshly initialised network in the official layout
      (save_checkpoint). Its predictions are near-uniform, so no hard label passes the 0.95
      threshold and stages 2 and 3 train their pseudo-label CE on all-ignored labels (0 by design,
      proda/losses.py); every shape is as with the released model. (A head scaled up to make
      eval-mode predictions confident is no stand-in: in train mode BatchNorm normalises the
      features, stage 1's source CE reached 3e5 and the stage-2 distillation loss was NaN.)
    * SimCLR weights: ``{"state_dict": backbone}`` plus a key the model lacks (the projection
      head's), which the loader filters out."""
    import torch

    from proda.models.checkpoint import save_checkpoint
    from proda.models.deeplabv2 import DeepLabV2

    width = yaml.safe_load(OVERRIDE.read_text())["model"]
    kwargs = dict(backbone="resnet101", base_width=width["base_width"], head_channels=width["head_channels"])
    torch.manual_seed(0)
    warmup = save_checkpoint(folder / "warmup.pt", DeepLabV2(n_class, **kwargs), iteration=1)
    state = DeepLabV2(n_class, bn_clr=True, **kwargs).state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith(("layer5.", "bn_pretrain."))}
    simclr = folder / "simclr.pth"
    torch.save({"state_dict": {**backbone, "fc.weight": torch.zeros(8, 4 * 8 * width["base_width"])}}, simclr)
    return warmup, simclr


def smk(workdir: Path, repo: Path, configfiles, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", *map(str, configfiles), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="module", params=list(PRESETS))
def preset_run(request, tmp_path_factory) -> SimpleNamespace:
    """One real run of a preset at the paper's sizes (the whole DAG, to the report)."""
    from proda.data import toycity

    name, spec = request.param, PRESETS[request.param]
    root = tmp_path_factory.mktemp(name)
    t0 = time.monotonic()
    data = toycity.generate(root / "data", seed=0, n_source=N_SOURCE, n_target_train=N_TARGET_TRAIN,
                            n_target_val=N_TARGET_VAL, source_size=spec.source_size,
                            target_size=CITYSCAPES_SIZE, source_layout=spec.layout)
    (root / "weights").mkdir()
    warmup, simclr = _stand_in_weights(root / "weights", spec.n_class)
    paths = root / "paths.yaml"
    paths.write_text(yaml.safe_dump({"data": {"source": {"root": str(data["source"])},
                                              "target": {"root": str(data["target"])}},
                                     "warmup": {"checkpoint": str(warmup)}, "model": {"simclr": str(simclr)}}))
    repo = _snapshot(root)
    configfiles = [repo / "config" / f"{name}.yaml", repo / "config" / OVERRIDE.name, paths]
    work = root / "work"
    work.mkdir()
    t1 = time.monotonic()
    r = smk(work, repo, configfiles, "--cores", "2", "--show-failed-logs")
    t2 = time.monotonic()
    print(f"\n{name}: data and stand-ins {t1 - t0:.0f} s, snakemake {t2 - t1:.0f} s", flush=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]
    results = work / "results"
    manifest = yaml.safe_load((results / name / "manifest.yaml").read_text())
    return SimpleNamespace(name=name, spec=spec, data=data, results=results, out=results / name,
                           manifest=manifest, paths=paths, stdout=r.stdout + r.stderr,
                           seconds={"data": t1 - t0, "snakemake": t2 - t1})


def _model(run: SimpleNamespace, stage: str) -> Path:
    return run.results / run.manifest["stages"][stage]["model"]


def _names(folder: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in folder.rglob(pattern))


@pytest.mark.slow
def test_the_chain_runs_to_the_report(preset_run):
    """The imported warm-up and three trained stages, each evaluated; the report has 4 stage rows
    with the preset's classes (SYNTHIA: 16, with mIoU-16 and mIoU-13)."""
    from proda.data.labels import class_names

    run, n = preset_run, preset_run.spec.n_class
    assert run.manifest["stages"].keys() == set(STAGES)
    for stage in STAGES:
        model = _model(run, stage)
        assert model.is_file(), stage
        evaluation = run.results / run.manifest["stages"][stage]["eval"]
        rows = dict(csv.reader(open(evaluation)))
        assert [k for k in rows if k != "class"][:n] == list(class_names(n)), stage
        assert (run.out / "eval" / f"{stage}.csv").read_text() == evaluation.read_text()
        log = list(csv.DictReader(open(model.with_name("train.csv"))))
        want = yaml.safe_load(OVERRIDE.read_text()).get(stage, {}).get("iterations", 0)
        assert [int(r["iteration"]) for r in log] == list(range(1, want + 1)), stage
        assert all(np.isfinite(float(r["loss"])) for r in log), stage
    with open(run.out / "report" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in rows] == STAGES
    summaries = ["mIoU"] if n == 19 else ["mIoU", "mIoU-16", "mIoU-13"]
    assert list(rows[0]) == ["stage", *class_names(n), *summaries]
    assert all(0 <= float(r[k]) <= 100 for r in rows for k in summaries)
    for rel in ("report/miou_by_stage.png", "report/per_class_iou.png", "report/prediction_grid.png",
                "report/training_curves.png", "label_quality.csv"):
        assert (run.out / rel).stat().st_size > 0, rel


@pytest.mark.slow
def test_every_step_ran_with_the_presets_shapes(preset_run):
    """Every artifact's record holds the preset's settings, bar the override's shape-neutral keys:
    the sizes, resize, crop, batch size, backbone, flip TTA of the preset made these files."""
    from proda import records
    from proda.config import resolve

    run = preset_run
    preset = dict(leaves(resolve(preset_file(run.name), run.paths)))
    checked = 0
    for rel in run.manifest["artifacts"]:
        target = run.results / rel
        rec = records.read(target if target.is_dir() else Path(f"{target}.{records.RECORD}"))
        for key, value in leaves(rec["settings"]):
            if key in preset and key not in SHAPE_NEUTRAL:
                assert value == preset[key], (rel, key, value, preset[key])
                checked += 1
            assert key not in EXECUTION_ONLY, (rel, key)
    assert checked
    stage1 = yaml.safe_load((_model(run, "stage1").parent / "record.yaml").read_text())["settings"]
    assert stage1["data"]["crop"] == [896, 512] and stage1["data"]["resize"] == 2200
    assert stage1["data"]["source"]["size"] == list(run.spec.source_size)
    assert stage1["data"]["target"]["size"] == list(CITYSCAPES_SIZE)


@pytest.mark.slow
def test_the_datasets_have_the_real_layouts_and_sizes(preset_run):
    from PIL import Image

    run = preset_run
    source, target = Path(run.data["source"]), Path(run.data["target"])
    if run.spec.layout == "gta5":
        assert (source / "split.mat").is_file()
        images, labels = sorted((source / "images").glob("*.png")), sorted((source / "labels").glob("*.png"))
    else:
        images, labels = sorted((source / "RGB").glob("*.png")), sorted((source / "GT" / "LABELS").glob("*.png"))
        for label in labels:  # SYNTHIA: 16-bit colour PNGs (bit depth at byte 24 of the IHDR)
            head = label.read_bytes()[:26]
            assert head[24] == 16 and head[25] == 2, label
    assert len(images) == len(labels) == N_SOURCE
    assert {Image.open(p).size for p in images + labels} == {run.spec.source_size}
    for split, n in (("train", N_TARGET_TRAIN), ("val", N_TARGET_VAL)):
        files = sorted((target / "leftImg8bit" / split).rglob("*.png")) + \
            sorted((target / "gtFine" / split).rglob("*_labelIds.png"))
        assert len(files) == 2 * n and {Image.open(p).size for p in files} == {CITYSCAPES_SIZE}, split


@pytest.mark.slow
def test_pseudo_labels_and_prototypes_at_the_official_resolutions(preset_run):
    """Soft labels: float16 [C, 129, 257], the logit resolution of a full 2048x1024 target image.
    Hard labels (stage 1 and stage 2 teachers): label and confidence level at the full target
    size, 1024x2048, made with flip TTA. Prototypes: [C, head_channels]."""
    import h5py

    from proda.models.deeplabv2 import output_size

    run, n = preset_run, preset_run.spec.n_class
    w, h = CITYSCAPES_SIZE
    assert (output_size(h), output_size(w)) == LOGITS_HW
    warm = _model(run, "warmup").parent
    (soft,) = sorted(warm.glob("soft_labels-*.h5"))
    with h5py.File(soft) as f:
        assert len(f) == N_TARGET_TRAIN
        assert {f[k].shape for k in f} == {(n, *LOGITS_HW)} and {f[k].dtype for k in f} == {np.dtype(np.float16)}
    (protos,) = sorted(warm.glob("prototypes-*.h5"))
    with h5py.File(protos) as f:
        width = yaml.safe_load(OVERRIDE.read_text())["model"]["head_channels"]
        assert f["prototypes"].shape == (n, width) and f["counts"].shape == (n,)
        assert int(np.asarray(f["counts"]).sum()) > 0
    for teacher in ("stage1", "stage2"):
        (hard,) = sorted(_model(run, teacher).parent.glob("hard_labels-*.h5"))
        with h5py.File(hard) as f:
            assert len(f) == N_TARGET_TRAIN and bool(f.attrs["flip"]) is True, teacher
            for k in f:
                assert f[k]["label"].shape == f[k]["level"].shape == (h, w), (teacher, k)
                assert int(np.asarray(f[k]["label"]).max()) < n, (teacher, k)


@pytest.mark.slow
def test_every_stage_is_evaluated_on_full_size_target_images(preset_run):
    """The evaluation reads the target val split at data.target.size (its record), which is the
    images' own 2048x1024, and upsamples the logits to the labels' size: every pixel counts."""
    from proda import records

    run = preset_run
    for stage in STAGES:
        evaluation = run.results / run.manifest["stages"][stage]["eval"]
        settings = records.read(evaluation)["settings"]
        assert settings["data"]["target"]["size"] == list(CITYSCAPES_SIZE), stage
        assert settings.get("eval", {}).get("split", "val") == "val", stage
