"""Training stages 1-3. Each writes its model, its per-iteration log (train.csv) and its record
into its own folder, and resume checkpoints into <folder>/state/ (kept when a job dies, so the
rerun resumes; used only by the same job: proda/train/resume.py).

One process runs each stage on CPU or one GPU. With `gpu` > 1 (a site profile's set-resources,
or --set-resources stage1:gpu=4) the job launches torchrun with one process per GPU instead
(DistributedDataParallel; proda/steps.py, run_step)."""


rule stage1:
    input:
        warmup=artifact("warmup"),
        soft=artifact("soft"),
        prototypes=artifact("prototypes"),
        data=DATA.get("data", []),
    output:
        model="{node}/model.pt",
        log="{node}/train.csv",
        record="{node}/record.yaml",
    log:
        "{node}/job.log",
    benchmark:
        "{node}/job.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("stage1"),
    conda:
        "../../environment.yml"
    threads: threads_of("stage1")
    resources:
        **resources_of("stage1"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"


rule distill:
    """Stage 2 and stage 3: the student learns from the hard labels of the previous stage's model."""
    input:
        teacher=artifact("teacher"),
        labels=artifact("labels"),
        init=artifact("init"),
        weights=artifact("weights"),
        data=DATA.get("data", []),
    output:
        model="{node}/model.pt",
        log="{node}/train.csv",
        record="{node}/record.yaml",
    log:
        "{node}/job.log",
    benchmark:
        "{node}/job.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("stage2", "stage3"),
    conda:
        "../../environment.yml"
    threads: threads_of("stage2")
    resources:
        **resources_of("stage2"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"
