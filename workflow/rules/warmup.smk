"""Step 0: the adversarial warm-up, or the import of an existing warm-up checkpoint
(warmup.checkpoint, e.g. the released one), which is then this rule's input."""


rule warmup:
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
        node=node_pattern("warmup"),
    conda:
        "../../environment.yml"
    threads: threads_of("warmup")
    resources:
        **resources_of("warmup"),
    params:
        cfg=view_of,
    script:
        "../scripts/warmup.py"
