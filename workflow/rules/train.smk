"""Training stages 1-3. Each writes its model and its per-iteration log (train.csv) into its own
folder, and resume checkpoints into <folder>/state/ (kept when a job dies, so the rerun resumes;
used only by the same job: proda/train/resume.py).

One process runs each stage on CPU or one GPU. With `gpu` > 1 (a site profile's set-resources,
or --set-resources stage1:gpu=4) the worker launches torchrun with one process per GPU instead
(DistributedDataParallel; proda/launch.py)."""


rule stage1:
    input:
        unpack(inputs_of),
    output:
        model="{node}/model.pt",
        log="{node}/train.csv",
    log:
        "{node}/job.log",
    benchmark:
        "{node}/job.benchmark.tsv"
    wildcard_constraints:
        node=node_pattern("stage1"),
    conda:
        "../../environment.yml"
    threads: threads_of("stage1")
    resources:
        **resources_of("stage1"),
    params:
        cfg=view_of,
    script:
        "../scripts/stage1.py"


rule distill:
    """Stage 2 and stage 3 (the `node` wildcard ends in stage2-<digest> or stage3-<digest>)."""
    input:
        unpack(inputs_of),
    output:
        model="{node}/model.pt",
        log="{node}/train.csv",
    log:
        "{node}/job.log",
    benchmark:
        "{node}/job.benchmark.tsv"
    wildcard_constraints:
        node=node_pattern("stage[23]"),
    conda:
        "../../environment.yml"
    threads: threads_of("distill")
    resources:
        **resources_of("distill"),
    params:
        cfg=view_of,
        stage=step_of,
    script:
        "../scripts/distill.py"
